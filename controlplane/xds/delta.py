"""The incremental (delta) ADS state machine of one stream (``DeltaAggregatedResources``).

Free of gRPC like :mod:`.protocol`. Per type the stream tracks what the proxy subscribed to
(CDS and LDS are wildcard: an empty first subscription, or ``*``) and which version of each
resource the proxy holds (seeded from ``initial_resource_versions`` on a reconnect, so a
restarted control plane sends nothing the proxy already has). A resource's version is a hash
of its content. Rules:

- A request subscribing or unsubscribing names is answered with what the proxy lacks.
- An ACK (a nonce, no ``error_detail``) is not answered; a NACK is recorded and not answered.
- A snapshot change sends only the resources whose version differs from the proxy's, and
  ``removed_resources`` for those it holds that are gone (wildcard types) or vanished.
- After a CDS response, the EDS of every cluster it carried is sent again even if unchanged:
  Envoy re-warms an updated cluster until its endpoints arrive.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Resource,
)
from google.protobuf.any_pb2 import Any

from controlplane.xds.cache import Snapshot
from controlplane.xds.protocol import Meaning, Reply
from controlplane.xds.types import CLUSTER, ENDPOINT, PUSH_ORDER, SECRET, WILDCARD

__all__ = ["DeltaProtocol", "DeltaReply", "resource_version"]


def resource_version(packed: Any) -> str:
    """A resource's version: a hash of its serialized ``Any``."""
    return hashlib.sha256(packed.SerializeToString(deterministic=True)).hexdigest()[:12]


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    #: What the proxy holds: name -> version.
    held: dict[str, str] = field(default_factory=dict)
    requested: bool = False
    nonce: str = ""
    #: Names to send again even if unchanged (EDS after CDS).
    force: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class DeltaReply:
    """What one delta request meant (``reply``) and the responses it calls for."""

    reply: Reply
    responses: tuple[DeltaDiscoveryResponse, ...] = ()


@dataclass(slots=True)
class DeltaProtocol:
    """One delta stream's state; ``allow_secrets`` as for :class:`.protocol.StreamProtocol`."""

    allow_secrets: bool = False
    _types: dict[str, _TypeState] = field(default_factory=dict)
    _counter: int = 0

    def on_request(self, request: DeltaDiscoveryRequest,
                   snapshot: Snapshot | None) -> DeltaReply:
        """Handle one request against the proxy's current snapshot."""
        type_url = request.type_url
        if type_url not in PUSH_ORDER:
            return DeltaReply(Reply("unknown_type", type_url))
        state = self._types.setdefault(type_url, _TypeState())
        first = not state.requested
        state.requested = True
        subscribe = set(request.resource_names_subscribe)
        if first:
            state.held.update(request.initial_resource_versions)
            state.wildcard = type_url in WILDCARD and (not subscribe or "*" in subscribe)
        elif "*" in subscribe:
            state.wildcard = True
        state.names |= subscribe - {"*"}
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            state.names.discard(name)
            state.held.pop(name, None)
        nonce = request.response_nonce
        if nonce and request.HasField("error_detail"):
            return DeltaReply(Reply("nack", type_url, "", nonce, request.error_detail.message))
        meaning: Meaning = "ack" if nonce else "initial"
        if nonce and nonce != state.nonce and not subscribe:
            return DeltaReply(Reply("stale", type_url, "", nonce))
        responses = self._respond(type_url, snapshot) if (subscribe or first) else ()
        return DeltaReply(Reply(meaning, type_url, "", nonce), responses)

    def on_snapshot(self, snapshot: Snapshot) -> tuple[DeltaDiscoveryResponse, ...]:
        """What a new snapshot calls for, in push order."""
        out: list[DeltaDiscoveryResponse] = []
        for type_url in PUSH_ORDER:
            state = self._types.get(type_url)
            if state is not None and state.requested:
                out.extend(self._respond(type_url, snapshot))
        return tuple(out)

    def _wanted(self, state: _TypeState, snapshot: Snapshot, type_url: str) -> dict[str, Any]:
        resources = snapshot.of(type_url)
        if type_url == SECRET and not self.allow_secrets:
            return {}
        if state.wildcard:
            return dict(resources)
        return {n: resources[n] for n in state.names if n in resources}

    def _respond(self, type_url: str,
                 snapshot: Snapshot | None) -> tuple[DeltaDiscoveryResponse, ...]:
        if snapshot is None:
            return ()
        state = self._types[type_url]
        wanted = self._wanted(state, snapshot, type_url)
        changed = []
        for name in sorted(wanted):
            version = resource_version(wanted[name])
            if state.held.get(name) != version or name in state.force:
                changed.append(Resource(name=name, version=version, resource=wanted[name]))
        # Held but no longer wanted: deleted from the mesh, or (wildcard) gone from it.
        gone = sorted(n for n in state.held if n not in wanted)
        state.force.clear()
        if not changed and not gone:
            return ()
        self._counter += 1
        nonce = str(self._counter)
        for resource in changed:
            state.held[resource.name] = resource.version
        for name in gone:
            del state.held[name]
        state.nonce = nonce
        if type_url == CLUSTER and changed:
            endpoints = self._types.setdefault(ENDPOINT, _TypeState())
            endpoints.force |= {r.name for r in changed}
        response = DeltaDiscoveryResponse(
            system_version_info=snapshot.versions.get(type_url, ""), type_url=type_url,
            nonce=nonce, resources=changed, removed_resources=gone)
        return (response,)

    def sent(self, type_url: str) -> str:
        """The nonce of the last response of ``type_url`` ('' if none)."""
        state = self._types.get(type_url)
        return state.nonce if state else ""
