"""The service graph behind ``/graph``: per-edge stats over a recent window.

Nodes are workloads (``<workload>.<namespace>``), a service when the destination workload is
not known (``svc:<host>``), or ``unknown``, the same nodes Kiali derives from the Istio labels.
An edge is (source node, destination node, protocol). Both sidecars of a mesh call report the
same request, so each edge keeps the two reporters apart and serves the destination's view when
it has one (it alone knows mTLS), else the source's — counting every request once.

Time is cut into ``window / 12`` buckets; the window slides one bucket at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy_mixer.common.clock import Clock, wall
from telemetry.identity import UNKNOWN
from telemetry.labels import ISTIO_LABELS

_I = {name: i for i, name in enumerate(ISTIO_LABELS)}
_BUCKETS_PER_WINDOW = 12
#: Latency bounds for p50/p99 (ms); finer than Envoy's defaults at the low end.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 35, 50, 75, 100, 150, 250, 400, 600, 1000, 1500, 2500,
    5000, 10000, 30000, 60000,
)


@dataclass(slots=True)
class _Slot:
    start: float
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    mtls: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    connections: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


def _node(values: Sequence[str], side: str) -> tuple[str, dict[str, str]]:
    workload = values[_I[f"{side}_workload"]]
    namespace = values[_I[f"{side}_workload_namespace"]]
    attrs = {
        "workload": workload,
        "namespace": namespace,
        "app": values[_I[f"{side}_app"]],
        "version": values[_I[f"{side}_version"]],
        "canonical_service": values[_I[f"{side}_canonical_service"]],
        "canonical_revision": values[_I[f"{side}_canonical_revision"]],
        "cluster": values[_I[f"{side}_cluster"]],
    }
    if workload != UNKNOWN:
        return f"{workload}.{namespace}", {"type": "workload", **attrs}
    service = values[_I["destination_service"]] if side == "destination" else UNKNOWN
    if service != UNKNOWN:
        return f"svc:{service}", {"type": "service", "service": service}
    return UNKNOWN, {"type": "unknown"}


def _quantile(q: float, counts: Sequence[int]) -> float | None:
    """histogram_quantile's linear interpolation over LATENCY_BOUNDS (+Inf -> last bound)."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for i, count in enumerate(counts):
        upper = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else LATENCY_BOUNDS[-1]
        if count and seen + count >= rank:
            return round(lower + (upper - lower) * (rank - seen) / count, 3)
        seen += count
        lower = upper
    return LATENCY_BOUNDS[-1]


class ServiceGraph:
    """Windowed edge statistics fed by the recorder's label values."""

    def __init__(
        self, window_seconds: float = 60.0, *, clock: Clock = wall
    ) -> None:
        self._clock = clock
        self._edges: dict[tuple[str, str, str, str], list[_Slot]] = {}
        self._nodes: dict[str, tuple[dict[str, str], float]] = {}
        self._node_cache: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}
        self.configure(window_seconds)

    def configure(self, window_seconds: float) -> None:
        """Change the window (kept data is re-bucketed lazily)."""
        self.window = window_seconds
        self.step = window_seconds / _BUCKETS_PER_WINDOW

    def _side(self, values: Sequence[str], side: str, lo: int, hi: int) -> str:
        # A mesh has few distinct identities: build each node's attributes once.
        key = (side, *values[lo:hi], values[14])
        cached = self._node_cache.get(key)
        if cached is None:
            if len(self._node_cache) > 10_000:
                self._node_cache.clear()
            cached = self._node_cache[key] = _node(values, side)
        name, attrs = cached
        self._nodes[name] = (attrs, self._clock())
        return name

    def _slot(self, values: Sequence[str]) -> _Slot:
        now = self._clock()
        src = self._side(values, "source", 1, 9)
        dst = self._side(values, "destination", 9, 20)
        key = (values[0], src, dst, values[_I["request_protocol"]])
        slots = self._edges.get(key)
        if slots is None:
            slots = self._edges[key] = []
        start = now - now % self.step
        if not slots or slots[-1].start != start:
            slots.append(_Slot(start))
            cutoff = now - self.window
            while slots and slots[0].start + self.step <= cutoff:
                slots.pop(0)
        return slots[-1]

    def add_request(self, values: Sequence[str], duration_ms: float) -> None:
        """Count an HTTP/gRPC request given its 25 Istio label values."""
        slot = self._slot(values)
        slot.requests += 1
        code = values[_I["response_code"]]
        grpc_status = values[_I["grpc_response_status"]]
        if code.startswith("5") or code == "0" or grpc_status not in ("", "0"):
            slot.errors += 1
        elif code.startswith("4"):
            slot.client_errors += 1
        if values[_I["connection_security_policy"]] == "mutual_tls":
            slot.mtls += 1
        lo, hi = 0, len(LATENCY_BOUNDS)
        while lo < hi:  # bisect_left, inlined: this runs per request
            mid = (lo + hi) // 2
            if LATENCY_BOUNDS[mid] < duration_ms:
                lo = mid + 1
            else:
                hi = mid
        slot.latency[lo] += 1

    def add_tcp(self, values: Sequence[str], opened: bool, received: int, sent: int) -> None:
        """Count TCP connection activity given its label values."""
        slot = self._slot(values)
        slot.connections += int(opened)
        slot.bytes_received += received
        slot.bytes_sent += sent
        if values[_I["connection_security_policy"]] == "mutual_tls":
            slot.mtls += int(opened)

    def snapshot(self) -> dict[str, Any]:
        """Nodes and edges over the window, as JSON-able data (what ``/graph`` returns)."""
        now = self._clock()
        cutoff = now - self.window
        views: dict[tuple[str, str, str], tuple[str, list[_Slot]]] = {}
        for key in list(self._edges):
            reporter, src, dst, protocol = key
            slots = [s for s in self._edges[key] if s.start + self.step > cutoff]
            if not slots:
                del self._edges[key]
                continue
            self._edges[key] = slots
            edge = (src, dst, protocol)
            # The destination's report wins: it sees mTLS and the real server-side latency.
            if edge not in views or reporter == "destination":
                views[edge] = (reporter, slots)
        span = max(min(self.window, now - min(
            (s[0].start for _, s in views.values()), default=now)), self.step)
        edges = []
        used: set[str] = set()
        for (src, dst, protocol), (reporter, slots) in sorted(views.items()):
            used.update((src, dst))
            requests = sum(s.requests for s in slots)
            latency = [sum(col) for col in zip(*(s.latency for s in slots), strict=True)]
            item: dict[str, Any] = {
                "source": src, "destination": dst, "protocol": protocol, "reporter": reporter,
            }
            if protocol == "tcp":
                connections = sum(s.connections for s in slots)
                item.update({
                    "connections": connections,
                    "connection_rate": round(connections / span, 4),
                    "bytes_sent_rate": round(sum(s.bytes_sent for s in slots) / span, 2),
                    "bytes_received_rate": round(sum(s.bytes_received for s in slots) / span, 2),
                })
                mtls_base = connections
            else:
                errors = sum(s.errors for s in slots)
                item.update({
                    "requests": requests,
                    "request_rate": round(requests / span, 4),
                    "error_rate": round(errors / requests, 4) if requests else 0.0,
                    "client_error_rate": (round(sum(s.client_errors for s in slots) / requests, 4)
                                          if requests else 0.0),
                    "p50_ms": _quantile(0.5, latency),
                    "p99_ms": _quantile(0.99, latency),
                })
                mtls_base = requests
            mtls = sum(s.mtls for s in slots)
            # A server always knows; a client only when its logger logs the upstream SANs
            # (otherwise its policy is "unknown", never "mutual_tls").
            if reporter == "destination" or mtls:
                ratio = round(mtls / mtls_base, 4) if mtls_base else 0.0
                item.update({"mtls": bool(mtls_base) and mtls == mtls_base, "mtls_ratio": ratio})
            else:
                item.update({"mtls": None, "mtls_ratio": None})  # this client cannot tell
            edges.append(item)
        for name in [n for n, (_, seen) in self._nodes.items() if seen < cutoff]:
            del self._nodes[name]
        nodes = [{"id": n, **attrs} for n, (attrs, _) in sorted(self._nodes.items())
                 if n in used]
        return {
            "window_seconds": self.window,
            "generated_at": now,
            "nodes": nodes,
            "edges": edges,
        }
