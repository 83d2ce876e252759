"""Entries → Istio metric series, rendered by a custom Prometheus collector.

We keep our own series store instead of prometheus_client metric objects because the guard
Istio users ask for needs control over series: a cap per metric (samples beyond it go to one
overflow series whose label values are all ``__overflow__`` and are counted as refused), idle
expiry (a series untouched for ``series_idle_expiry_seconds`` disappears from ``/metrics``), and
buckets set per metric at reload. Rendering goes through prometheus_client's metric families, so
the text is exactly what a prometheus_client ``Histogram``/``Counter`` would produce
(``_bucket{le=...}``, ``_count``, ``_sum``; ``_total`` counters) minus ``_created``. Each
family lists its labels in the metric's own (Istio's) order, which ``telemetry.exposition``
keeps on ``/metrics``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from envoy_mixer.common.clock import Clock, monotonic
from telemetry.config import LabelSource, MetricKind, MetricSpec, TelemetryConfig
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent
from telemetry.identity import UNKNOWN, NodeIdentity, PeerDirectory
from telemetry.labels import LabelOptions, http_label_values, tcp_label_values

OVERFLOW = "__overflow__"
#: Live TCP connections whose byte counts we remember to turn cumulative counts into deltas.
MAX_TRACKED_CONNECTIONS = 100_000

Values = tuple[str, ...]


def _le(bound: float) -> str:
    """The ``le`` text prometheus_client writes for ``bound`` (``1.0``, ``3.6e+06``)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class _Hist:
    """One histogram series: per-bucket (non-cumulative) counts, +Inf last, sum, last update."""

    __slots__ = ("counts", "total", "updated")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0
        self.updated = 0.0


class MetricStore:
    """The series of one metric, capped, with the overflow series kept aside."""

    def __init__(self, spec: MetricSpec, max_series: int) -> None:
        self.spec = spec
        self.max_series = max_series
        self.bounds = spec.buckets
        self.les = [_le(b) for b in spec.buckets] + ["+Inf"]
        self.series: dict[Values, list[float] | _Hist] = {}
        self.overflow: list[float] | _Hist | None = None
        self.refused = 0
        self.expired = 0

    def _slot(self, key: Values, now: float) -> list[float] | _Hist:
        series = self.series
        slot = series.get(key)
        if slot is not None:
            return slot
        histogram = self.spec.kind is MetricKind.HISTOGRAM
        if len(series) >= self.max_series:
            self.refused += 1
            if self.overflow is None:
                self.overflow = _Hist(len(self.les)) if histogram else [0.0, now]
            return self.overflow
        slot = _Hist(len(self.les)) if histogram else [0.0, now]
        series[key] = slot
        return slot

    def add(self, key: Values, amount: float, now: float) -> None:
        """Counter: add ``amount`` to the series ``key``."""
        slot = self._slot(key, now)
        assert isinstance(slot, list)
        slot[0] += amount
        slot[1] = now

    def observe(self, key: Values, value: float, now: float) -> None:
        """Histogram: count ``value`` in the series ``key``."""
        slot = self._slot(key, now)
        assert isinstance(slot, _Hist)
        slot.counts[bisect_left(self.bounds, value)] += 1
        slot.total += value
        slot.updated = now

    def expire(self, cutoff: float) -> None:
        """Forget series (and the overflow series) not updated since ``cutoff``."""
        stale = [k for k, s in self.series.items()
                 if (s.updated if isinstance(s, _Hist) else s[1]) < cutoff]
        for key in stale:
            del self.series[key]
        self.expired += len(stale)
        if self.overflow is not None:
            updated = (self.overflow.updated if isinstance(self.overflow, _Hist)
                       else self.overflow[1])
            if updated < cutoff:
                self.overflow = None

    def family(self) -> Metric:
        """The metric family with every current series (overflow last)."""
        spec = self.spec
        names = list(spec.label_names)
        items: list[tuple[Values, list[float] | _Hist]] = list(self.series.items())
        if self.overflow is not None:
            items.append(((OVERFLOW,) * len(names), self.overflow))
        if spec.kind is MetricKind.COUNTER:
            counter = CounterMetricFamily(spec.name, spec.help, labels=names)
            for key, slot in items:
                assert isinstance(slot, list)
                counter.add_metric(list(key), slot[0])
            return counter
        histogram = HistogramMetricFamily(spec.name, spec.help, labels=names)
        for key, slot in items:
            assert isinstance(slot, _Hist)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self.les, slot.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            histogram.add_metric(list(key), buckets, slot.total)
        return histogram


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one entry produced: its 25 label values, and for TCP the connection deltas."""

    values: Values
    opened: bool = False
    received: int = 0
    sent: int = 0
    #: A TCP connect report held back until the connection's identity is settled (its values
    #: are provisional and nothing was counted).
    pending: bool = False


@dataclass(slots=True)
class _Connection:
    """A live TCP connection: cumulative bytes so far and the label values it counts under.

    ``values`` is None while its opening is pending (handshake not finished at connect).
    """

    received: int
    sent: int
    values: Values | None


def _handshake_pending(entry: TcpEntry) -> bool:
    """A connect report under TLS before the peer's certificate arrived.

    The TCP proxy connects upstream as soon as the downstream connection is accepted, so its
    connect report can precede the end of the downstream TLS handshake: Envoy 1.40 logs our
    certificate but not yet the peer's. Its labels would say ``none`` where the close report
    says ``mutual_tls``; Istio also reports the open only once the peer is known.
    """
    return entry.event is TcpEvent.OPEN and entry.tls is not None and not entry.tls.peer_uri


class Recorder:
    """Turns domain entries into series and exposes them to a Prometheus registry."""

    def __init__(
        self,
        config: TelemetryConfig,
        registry: CollectorRegistry | None = None,
        *,
        clock: Clock = monotonic,
    ) -> None:
        self._clock = clock
        self.stores: dict[str, MetricStore] = {}
        self._connections: dict[tuple[str, str], _Connection] = {}
        #: Workloads by principal, learned from the reporters' own certificates.
        self.peers = PeerDirectory()
        self.configure(config)
        if registry is not None:
            registry.register(_RecorderCollector(self))

    def configure(self, config: TelemetryConfig) -> None:
        """Apply a (re)loaded config; series of metrics whose shape changed start afresh."""
        self.config = config
        self.options = LabelOptions(host_header_fallback=config.host_header_fallback)
        stores: dict[str, MetricStore] = {}
        for spec in config.metrics:
            old = self.stores.get(spec.name)
            if old is not None and (old.spec.label_names, old.spec.label_sources,
                                    old.spec.buckets) == (spec.label_names, spec.label_sources,
                                                          spec.buckets):
                old.spec = spec
                old.max_series = config.max_series_per_metric
                stores[spec.name] = old
            else:
                stores[spec.name] = MetricStore(spec, config.max_series_per_metric)
        self.stores = stores
        s = stores.get
        self._requests = s("istio_requests_total")
        self._duration = s("istio_request_duration_milliseconds")
        self._request_bytes = s("istio_request_bytes")
        self._response_bytes = s("istio_response_bytes")
        self._request_messages = s("istio_request_messages_total")
        self._response_messages = s("istio_response_messages_total")
        self._tcp_sent = s("istio_tcp_sent_bytes_total")
        self._tcp_received = s("istio_tcp_received_bytes_total")
        self._tcp_opened = s("istio_tcp_connections_opened_total")
        self._tcp_closed = s("istio_tcp_connections_closed_total")

    # ------------------------------------------------------------------ recording

    @staticmethod
    def _key(
        store: MetricStore, values: Values, entry: HttpEntry | TcpEntry, node: NodeIdentity
    ) -> Values:
        picker = store.spec.picker
        if picker is not None:
            return picker(values)
        return tuple(
            values[src] if isinstance(src, int) else _extract(src, entry, node)
            for src in store.spec.label_sources
        )

    def _learn(self, entry: HttpEntry | TcpEntry, node: NodeIdentity) -> None:
        """Teach the directory the reporter's own principal(s): its certificates name it."""
        peers = self.peers
        workload = node.workload
        if entry.tls is not None and entry.tls.local_uri:
            peers.learn(entry.tls.local_uri, workload)
        if entry.upstream_tls is not None and entry.upstream_tls.local_uri:
            peers.learn(entry.upstream_tls.local_uri, workload)
        if workload.principal != UNKNOWN:
            peers.learn(workload.principal, workload)

    def record_http(self, entry: HttpEntry, node: NodeIdentity) -> Recorded:
        """Count one HTTP/gRPC entry in the request metrics (and message counters for gRPC)."""
        self._learn(entry, node)
        values = http_label_values(entry, node, self.options, self.peers)
        now = self._clock()
        key = self._key
        if (store := self._requests) is not None:
            store.add(key(store, values, entry, node), 1.0, now)
        if (store := self._duration) is not None:
            store.observe(key(store, values, entry, node), entry.duration_ms, now)
        if (store := self._request_bytes) is not None:
            store.observe(key(store, values, entry, node), entry.request_bytes, now)
        if (store := self._response_bytes) is not None:
            store.observe(key(store, values, entry, node), entry.response_bytes, now)
        if values[20] == "grpc":
            if (store := self._request_messages) is not None and entry.grpc_request_messages:
                store.add(key(store, values, entry, node), entry.grpc_request_messages, now)
            if (store := self._response_messages) is not None and entry.grpc_response_messages:
                store.add(key(store, values, entry, node), entry.grpc_response_messages, now)
        return Recorded(values)

    def record_tcp(self, entry: TcpEntry, node: NodeIdentity) -> Recorded:
        """Count a TCP open/periodic/close report; byte counts are cumulative per connection.

        A connection keeps the label values of the report that opened it, so its opened,
        byte and closed counts always land in the same series (opened minus closed never goes
        negative per series); a connect report that precedes the TLS handshake's end is held
        back and the connection opens with the next report.
        """
        self._learn(entry, node)
        conn = (node.node_id, entry.stream_id) if entry.stream_id else None
        connections = self._connections
        previous = connections.get(conn) if conn is not None else None
        if previous is not None and previous.values is not None:
            values = previous.values
        else:
            values = tcp_label_values(entry, node, self.options, self.peers)
        if conn is not None and previous is None and _handshake_pending(entry):
            # Bytes from zero: the report that opens the connection counts all of them.
            self._track(conn, _Connection(0, 0, None))
            return Recorded(values, pending=True)
        # An unseen (or pending) connection opens now, whatever the first report is.
        opened = previous is None or previous.values is None
        rx = max(entry.received_bytes - (previous.received if previous else 0), 0)
        tx = max(entry.sent_bytes - (previous.sent if previous else 0), 0)
        closed = entry.event is TcpEvent.CLOSE
        if conn is not None:
            if closed:
                connections.pop(conn, None)
            elif previous is None:
                self._track(conn, _Connection(entry.received_bytes, entry.sent_bytes, values))
            else:
                previous.received, previous.sent = entry.received_bytes, entry.sent_bytes
                previous.values = values
        now = self._clock()
        key = self._key
        if opened and (store := self._tcp_opened) is not None:
            store.add(key(store, values, entry, node), 1.0, now)
        if closed and (store := self._tcp_closed) is not None:
            store.add(key(store, values, entry, node), 1.0, now)
        if rx and (store := self._tcp_received) is not None:
            store.add(key(store, values, entry, node), rx, now)
        if tx and (store := self._tcp_sent) is not None:
            store.add(key(store, values, entry, node), tx, now)
        return Recorded(values, opened, rx, tx)

    def _track(self, conn: tuple[str, str], state: _Connection) -> None:
        connections = self._connections
        if len(connections) >= MAX_TRACKED_CONNECTIONS:
            connections.pop(next(iter(connections)))  # oldest first: dicts keep order
        connections[conn] = state

    # ------------------------------------------------------------------ upkeep

    def expire(self) -> None:
        """Drop series idle for longer than the configured expiry (0 = never)."""
        ttl = self.config.series_idle_expiry_seconds
        if ttl <= 0:
            return
        cutoff = self._clock() - ttl
        for store in self.stores.values():
            store.expire(cutoff)

    def series_count(self, name: str) -> int:
        """Current number of series of ``name`` (overflow included)."""
        store = self.stores.get(name)
        if store is None:
            return 0
        return len(store.series) + (store.overflow is not None)

    def collect(self) -> Iterator[Metric]:
        """Every metric family, after expiring idle series, then our own series gauges."""
        self.expire()
        series = GaugeMetricFamily(
            "mixer_telemetry_series", "Series currently kept per Istio metric.",
            labels=["metric"])
        refused = CounterMetricFamily(
            "mixer_telemetry_series_refused",
            "Samples that would have created a series beyond max_series_per_metric; "
            "they were recorded in the overflow series instead.", labels=["metric"])
        expired = CounterMetricFamily(
            "mixer_telemetry_series_expired", "Series dropped after being idle.",
            labels=["metric"])
        for name, store in self.stores.items():
            yield store.family()
            series.add_metric([name], self.series_count(name))
            refused.add_metric([name], store.refused)
            expired.add_metric([name], store.expired)
        yield series
        yield refused
        yield expired


def _extract(source: LabelSource | int, entry: HttpEntry | TcpEntry, node: NodeIdentity) -> str:
    """The value of an added label; ``unknown`` when the header or key is absent."""
    assert isinstance(source, LabelSource)
    scope, key = source.scope, source.key
    value: object = None
    if scope == "literal":
        return key
    if scope == "request_header":
        value = entry.request_headers.get(key) if isinstance(entry, HttpEntry) else None
    elif scope == "response_header":
        value = entry.response_headers.get(key) if isinstance(entry, HttpEntry) else None
    elif scope == "node_metadata":
        value = node.metadata.get(key)
    elif scope == "node_label":
        labels = node.metadata.get("LABELS")
        value = labels.get(key) if isinstance(labels, dict) else None
    if value is None or isinstance(value, (dict, list)) or value == "":
        return "unknown"
    return str(value)


class _RecorderCollector(Collector):
    """Adapter registering a Recorder with a CollectorRegistry."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        return self._recorder.collect()
