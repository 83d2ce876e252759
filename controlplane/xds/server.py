"""The ADS servicer: gRPC in, the state machines inside (:mod:`.protocol` for SotW
``StreamAggregatedResources``, :mod:`.delta` for ``DeltaAggregatedResources``).

Each stream remembers the node from its first request (Envoy sends it only once with
``set_node_on_first_message_only``), checks who the peer is (:mod:`.identity`), subscribes to
its proxy's snapshot in the :class:`~controlplane.xds.cache.SnapshotCache` and then answers
requests and snapshot changes in the order they arrive. Requests are read by a separate task
into the same queue as the snapshot notifications, so a push never waits for Envoy to speak.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.ca.identity import SpiffeId
from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.delta import DeltaProtocol
from controlplane.xds.identity import IdentityError, NodeId, authorize, peer_spiffe_ids
from controlplane.xds.protocol import Reply, StreamProtocol
from controlplane.xds.status import StatusBoard
from controlplane.xds.types import SHORT
from envoy_mixer.common.logs import log_event

__all__ = ["AdsServer", "XdsMetrics"]

_log = logging.getLogger("controlplane.xds.server")
_streams = itertools.count(1)

#: The identity the mesh assigns to a claimed workload (None: no such workload).
Expected = Callable[[NodeId], SpiffeId | None]


class XdsMetrics:
    """The control plane's counters (registry injected)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushes = Counter("mixer_pilot_xds_pushes", "DiscoveryResponses sent, by type.",
                              ["type"], registry=registry)
        self.acks = Counter("mixer_pilot_xds_acks", "ACKs received, by type.", ["type"],
                            registry=registry)
        self.nacks = Counter("mixer_pilot_xds_nacks", "NACKs received, by type.", ["type"],
                             registry=registry)
        self.rejected = Counter("mixer_pilot_identity_rejected",
                                "xDS streams refused because of the peer's identity, by reason.",
                                ["reason"], registry=registry)
        self.connected = Gauge("mixer_pilot_connected_proxies", "Open ADS streams.",
                               registry=registry)


@dataclass(frozen=True, slots=True)
class _Event:
    """One thing a stream reacts to: a request, a snapshot change, or the end of input."""

    request: DiscoveryRequest | None = None
    snapshot_changed: bool = False
    ended: bool = False


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Serves each proxy the snapshot of the workload it proved to be.

    ``expected`` None runs without identities (plaintext, development and benchmarks): every
    node is served its configuration but never a secret.
    """

    def __init__(self, cache: SnapshotCache, status: StatusBoard, metrics: XdsMetrics,
                 expected: Expected | None) -> None:
        self.cache = cache
        self.status = status
        self.metrics = metrics
        self.expected = expected

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: Any,
    ) -> AsyncIterator[DiscoveryResponse]:
        """One Envoy's state-of-the-world ADS stream."""
        protocol = StreamProtocol(allow_secrets=self.expected is not None)

        def on_request(request: Any, snapshot: Snapshot | None) -> tuple[Reply, tuple[Any, ...]]:
            reply = protocol.on_request(request, snapshot)
            return reply, reply.responses

        async for response in self._serve(request_iterator, context, on_request,
                                          protocol.on_snapshot, "version_info"):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: Any,
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        """One Envoy's incremental ADS stream (``api_type: DELTA_GRPC``)."""
        protocol = DeltaProtocol(allow_secrets=self.expected is not None)

        def on_request(request: Any, snapshot: Snapshot | None) -> tuple[Reply, tuple[Any, ...]]:
            out = protocol.on_request(request, snapshot)
            return out.reply, out.responses

        async for response in self._serve(request_iterator, context, on_request,
                                          protocol.on_snapshot, "system_version_info"):
            yield response

    async def _serve(
        self, request_iterator: AsyncIterator[Any], context: Any,
        on_request: Callable[[Any, Snapshot | None], tuple[Reply, tuple[Any, ...]]],
        on_snapshot: Callable[[Snapshot], tuple[Any, ...]], version_field: str,
    ) -> AsyncIterator[Any]:
        stream_id = next(_streams)
        queue: asyncio.Queue[_Event] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(_Event(request=request))
            except (asyncio.CancelledError, grpc.RpcError):
                pass
            finally:
                queue.put_nowait(_Event(ended=True))

        reader = asyncio.create_task(read())
        unsubscribe: Callable[[], None] | None = None
        key = ""
        try:
            first = await queue.get()
            if first.request is None:
                return
            node = self._identify(first.request, context)
            if node is None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    "the peer's identity does not match its node")
                return
            node_id, identity = node
            key = node_id.key
            self.status.connected(key, node_id.render(), identity, stream_id)
            self.metrics.connected.inc()
            log_event(_log, "xds_connected", proxy=key, node_id=node_id.render(),
                      identity=identity, stream=stream_id)
            unsubscribe = self.cache.subscribe(
                key, lambda _k: queue.put_nowait(_Event(snapshot_changed=True)))
            event: _Event | None = first
            while event is not None and not event.ended:
                responses: tuple[Any, ...] = ()
                if event.request is not None:
                    reply, responses = on_request(event.request, self.cache.get(key))
                    self._record(key, reply)
                else:
                    if not self._still_valid(node_id, identity):
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                            "the workload's identity changed")
                        return
                    snapshot = self.cache.get(key)
                    responses = on_snapshot(snapshot) if snapshot else ()
                for response in responses:
                    self.status.sent(key, response.type_url, getattr(response, version_field),
                                     response.nonce)
                    self.metrics.pushes.labels(SHORT[response.type_url]).inc()
                    yield response
                event = await queue.get()
        finally:
            reader.cancel()
            if unsubscribe is not None:
                unsubscribe()
                self.metrics.connected.dec()
                self.status.disconnected(key, stream_id)
                log_event(_log, "xds_disconnected", proxy=key, stream=stream_id)

    def _identify(self, request: Any, context: Any) -> tuple[NodeId, str] | None:
        """The node of the first request and the identity it is served as (None: refuse)."""
        try:
            node = NodeId.parse(request.node.id)
            if self.expected is None:
                return node, ""
            peers = peer_spiffe_ids(context.auth_context())
            return node, authorize(node, peers, self.expected).uri
        except IdentityError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            log_event(_log, "xds_identity_rejected", logging.WARNING, reason=exc.reason,
                      error=str(exc), node_id=request.node.id, peer=str(context.peer()))
            return None

    def _still_valid(self, node: NodeId, identity: str) -> bool:
        """False when a mesh edit gave the workload another identity (or removed it): the
        stream was proven for the old one and must not receive the new one's secrets."""
        if self.expected is None:
            return True
        want = self.expected(node)
        if want is not None and want.uri == identity:
            return True
        self.metrics.rejected.labels("identity_changed").inc()
        log_event(_log, "xds_identity_rejected", logging.WARNING, reason="identity_changed",
                  node_id=node.render(), identity=identity,
                  expected=want.uri if want else None)
        return False

    def _record(self, key: str, reply: Reply) -> None:
        short = SHORT.get(reply.type_url, reply.type_url)
        if reply.meaning == "ack":
            self.status.acked(key, reply.type_url, reply.version, reply.nonce)
            self.metrics.acks.labels(short).inc()
        elif reply.meaning == "nack":
            self.status.nacked(key, reply.type_url, reply.nonce, reply.error)
            self.metrics.nacks.labels(short).inc()
            log_event(_log, "xds_nack", logging.WARNING, proxy=key, type=short,
                      kept_version=reply.version, nonce=reply.nonce, error=reply.error)
        elif reply.meaning == "stale":
            log_event(_log, "xds_stale_nonce_ignored", logging.DEBUG, proxy=key, type=short,
                      nonce=reply.nonce)
        elif reply.meaning == "unknown_type":
            log_event(_log, "xds_unknown_type", logging.WARNING, proxy=key, type=reply.type_url)


def register(server: grpc.aio.Server, servicer: AdsServer) -> None:
    """Add the ADS servicer to ``server``."""
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
