"""What each proxy was sent and what it said back, per type: ``mixer proxy-status``.

Istio's vocabulary: a type is **SYNCED** when the proxy ACKed the last response sent, **STALE**
when a response is still unanswered, **NACKED** when the proxy rejected the last response
(it then keeps its last accepted config, and we keep Envoy's error message), and **NOT SENT**
when nothing of that type was ever sent on the current connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controlplane.xds.types import PUSH_ORDER, SHORT

__all__ = ["ProxyStatus", "StatusBoard", "TypeStatus"]

State = Literal["SYNCED", "STALE", "NOT SENT", "NACKED"]


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """One type of one proxy: the last response sent, the last ACK, the last NACK."""

    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    acked_nonce: str = ""
    nack_nonce: str = ""
    nack_version: str = ""
    nack_message: str = ""
    nack_count: int = 0

    @property
    def state(self) -> State:
        """SYNCED, STALE, NOT SENT or NACKED (see the module doc)."""
        if not self.sent_nonce:
            return "NOT SENT"
        if self.nack_nonce == self.sent_nonce:
            return "NACKED"
        if self.acked_nonce == self.sent_nonce:
            return "SYNCED"
        return "STALE"

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {"state": self.state, "sent_version": self.sent_version,
                "acked_version": self.acked_version, "nonce": self.sent_nonce,
                "nack_count": self.nack_count, "nack_version": self.nack_version,
                "nack_message": self.nack_message}


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """A connected proxy: its node id, proven identity and per-type status."""

    key: str
    node_id: str
    identity: str
    connected: bool = True
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def of(self, type_url: str) -> TypeStatus:
        """The status of one type (NOT SENT if never sent)."""
        return self.types.get(type_url, TypeStatus())

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view, types by short name (CDS, EDS, LDS, RDS, SDS)."""
        return {"proxy": self.key, "node_id": self.node_id, "identity": self.identity,
                "connected": self.connected,
                "types": {SHORT[t]: self.of(t).as_dict() for t in PUSH_ORDER}}


class StatusBoard:
    """Every proxy's status, updated by the streams (one writer per proxy: its stream)."""

    def __init__(self) -> None:
        self._proxies: dict[str, ProxyStatus] = {}
        self._streams: dict[str, int] = {}

    def connected(self, key: str, node_id: str, identity: str, stream: int) -> None:
        """A stream for ``key`` opened; any earlier status of that proxy is forgotten."""
        self._streams[key] = stream
        self._proxies[key] = ProxyStatus(key, node_id, identity)

    def disconnected(self, key: str, stream: int) -> None:
        """The stream ended (ignored when a newer stream of that proxy already took over)."""
        if self._streams.get(key) == stream:
            self._proxies[key] = replace(self._proxies[key], connected=False)

    def _update(self, key: str, type_url: str, **changes: Any) -> None:
        proxy = self._proxies.get(key)
        if proxy is None:
            return
        types = dict(proxy.types)
        types[type_url] = replace(proxy.of(type_url), **changes)
        self._proxies[key] = replace(proxy, types=types)

    def sent(self, key: str, type_url: str, version: str, nonce: str) -> None:
        """A response went out."""
        self._update(key, type_url, sent_version=version, sent_nonce=nonce)

    def acked(self, key: str, type_url: str, version: str, nonce: str) -> None:
        """The proxy ACKed the response ``nonce`` (delta ACKs carry no version: the one sent
        with that nonce is recorded)."""
        proxy = self._proxies.get(key)
        if not version and proxy is not None and proxy.of(type_url).sent_nonce == nonce:
            version = proxy.of(type_url).sent_version
        self._update(key, type_url, acked_version=version, acked_nonce=nonce)

    def nacked(self, key: str, type_url: str, nonce: str, message: str) -> None:
        """The proxy rejected the response ``nonce`` with ``message``."""
        current = self._proxies.get(key)
        if current is None:
            return
        before = current.of(type_url)
        self._update(key, type_url, nack_nonce=nonce, nack_message=message,
                     nack_version=before.sent_version if before.sent_nonce == nonce else "",
                     nack_count=before.nack_count + 1)

    def get(self, key: str) -> ProxyStatus | None:
        """The status of one proxy."""
        return self._proxies.get(key)

    def all(self) -> tuple[ProxyStatus, ...]:
        """Every proxy seen, connected ones first, by key."""
        return tuple(sorted(self._proxies.values(), key=lambda p: (not p.connected, p.key)))
