"""The SotW ADS state machine of one stream: what to answer, and when to stay silent.

Free of gRPC: :class:`StreamProtocol` takes each ``DiscoveryRequest`` (and each snapshot
change) and returns the ``DiscoveryResponse`` messages to send plus what the request meant.
The rules, verified against Envoy 1.40 (docs/pilot.md):

- The nonce belongs to the stream; a request whose ``response_nonce`` is not the last one sent
  for its type is **stale** and ignored (it answers a response that was superseded).
- An empty ``response_nonce`` is the first request of a type on this stream (a start-up, or a
  reconnect carrying the last version Envoy applied): it is **always answered**, even by a
  control plane that never sent anything on this stream.
- A request with ``error_detail`` is a **NACK**: recorded, and **not answered** (re-sending
  the rejected snapshot loops; the next snapshot change is sent normally).
- An ACK is not answered again with the same resources, unless the requested names changed
  (EDS/RDS/SDS are requested by name, and the set grows) or the ACK-looking EDS request that
  follows a CDS push arrives: Envoy re-warms a changed cluster and holds its CDS ACK until an
  EDS response comes, so after each CDS response the next EDS request is always answered.
- A snapshot change pushes, in make-before-break order (CDS, EDS, LDS, RDS, SDS), only the
  types whose version changed and that the proxy has asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from controlplane.xds.cache import Snapshot
from controlplane.xds.types import CLUSTER, ENDPOINT, PUSH_ORDER, SECRET, WILDCARD

__all__ = ["Meaning", "Reply", "StreamProtocol"]

Meaning = Literal["initial", "ack", "nack", "stale", "unknown_type"]


@dataclass(slots=True)
class _TypeState:
    """What this stream knows about one type."""

    names: frozenset[str] = frozenset()
    requested: bool = False
    nonce: str = ""
    version: str = ""
    sent_names: frozenset[str] = frozenset()
    always_respond: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What one request meant, and the responses it calls for."""

    meaning: Meaning
    type_url: str
    version: str = ""
    nonce: str = ""
    error: str = ""
    responses: tuple[DiscoveryResponse, ...] = ()


@dataclass(slots=True)
class StreamProtocol:
    """One ADS stream's protocol state (nonces and names per type).

    ``allow_secrets`` False (an unproven peer) answers SDS with no resources at all.
    """

    allow_secrets: bool = False
    _types: dict[str, _TypeState] = field(default_factory=dict)
    _counter: int = 0

    def _state(self, type_url: str) -> _TypeState:
        return self._types.setdefault(type_url, _TypeState())

    def on_request(self, request: DiscoveryRequest, snapshot: Snapshot | None) -> Reply:
        """Handle one request against the proxy's current snapshot (None: none yet)."""
        type_url = request.type_url
        if type_url not in PUSH_ORDER:
            return Reply("unknown_type", type_url)
        state = self._state(type_url)
        nonce = request.response_nonce
        if nonce and nonce != state.nonce:
            return Reply("stale", type_url, request.version_info, nonce)
        names = frozenset(request.resource_names)
        names_changed = names != state.names
        state.names = names
        state.requested = True
        if request.HasField("error_detail"):
            # Envoy keeps its last accepted config; answering would resend the rejected one.
            return Reply("nack", type_url, request.version_info, nonce,
                         request.error_detail.message)
        if not nonce:
            return Reply("initial", type_url, request.version_info, nonce,
                         responses=self._respond(type_url, snapshot, force=True))
        force = state.always_respond or (type_url not in WILDCARD and names_changed)
        return Reply("ack", type_url, request.version_info, nonce,
                     responses=self._respond(type_url, snapshot, force=force))

    def on_snapshot(self, snapshot: Snapshot) -> tuple[DiscoveryResponse, ...]:
        """The responses a new snapshot calls for (changed, requested types, in push order)."""
        out: list[DiscoveryResponse] = []
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is None or not state.requested:
                continue
            out.extend(self._respond(type_url, snapshot, force=False))
        return tuple(out)

    def _respond(self, type_url: str, snapshot: Snapshot | None,
                 *, force: bool) -> tuple[DiscoveryResponse, ...]:
        if snapshot is None:
            return ()
        state = self._state(type_url)
        version = snapshot.versions.get(type_url, "")
        if not force and version == state.version and state.sent_names == state.names:
            return ()
        state.always_respond = False
        resources = snapshot.of(type_url)
        if type_url == SECRET and not self.allow_secrets:
            chosen: Iterable[str] = ()
        elif type_url in WILDCARD:
            chosen = sorted(resources)
        else:
            chosen = sorted(n for n in state.names if n in resources)
        self._counter += 1
        nonce = str(self._counter)
        response = DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce,
                                     resources=[resources[n] for n in chosen])
        state.nonce = nonce
        state.version = version
        state.sent_names = state.names
        if type_url == CLUSTER:
            # The CDS response may re-warm clusters: Envoy's next EDS request looks like an
            # ACK but must be answered, or the clusters (and the CDS ACK) hang.
            self._state(ENDPOINT).always_respond = True
        return (response,)

    def sent(self, type_url: str) -> tuple[str, str]:
        """(version, nonce) of the last response of ``type_url`` (empty if none)."""
        state = self._types.get(type_url)
        return (state.version, state.nonce) if state else ("", "")
