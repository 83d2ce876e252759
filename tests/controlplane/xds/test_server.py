"""The ADS servicer over a real in-process grpc.aio server and stub (plaintext mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from prometheus_client import CollectorRegistry

from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.server import AdsServer, XdsMetrics, register
from controlplane.xds.status import StatusBoard
from controlplane.xds.types import CLUSTER, LISTENER

NODE = "sidecar~127.0.0.1~{}.default~default.svc.cluster.local"


Served = tuple[SnapshotCache, StatusBoard, grpc.aio.Channel, CollectorRegistry]


def snap(*clusters: str) -> Snapshot:
    return Snapshot.build({CLUSTER: [Cluster(name=c) for c in clusters],
                           LISTENER: [Listener(name="l")]})


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    cache, status, registry = SnapshotCache(), StatusBoard(), CollectorRegistry()
    server = grpc.aio.server()
    register(server, AdsServer(cache, status, XdsMetrics(registry), None))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield cache, status, channel, registry
    await channel.close()
    await server.stop(0)


def first(name: str, type_url: str = CLUSTER) -> DiscoveryRequest:
    out = DiscoveryRequest(type_url=type_url)
    out.node.id = NODE.format(name)
    return out


async def test_initial_ack_and_only_changed_proxy_pushed(
    served: Served,
) -> None:
    """Both proxies get CDS; an ACK gets no answer; a change to one proxy reaches only it."""
    cache, status, channel, _registry = served
    cache.set_all({"a.default": snap("x"), "b.default": snap("y")})
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    calls = {}
    for name in ("a", "b"):
        call = stub.StreamAggregatedResources()
        await call.write(first(name))
        response = await call.read()
        assert [r.type_url for r in response.resources] == [CLUSTER]
        await call.write(DiscoveryRequest(type_url=CLUSTER, version_info=response.version_info,
                                          response_nonce=response.nonce))
        calls[name] = call
    # The ACK was not answered: the next message on the stream answers the LDS request.
    await calls["a"].write(DiscoveryRequest(type_url=LISTENER))
    assert (await calls["a"].read()).type_url == LISTENER
    cache.set_all({"a.default": snap("x", "z"), "b.default": snap("y")})
    pushed = await calls["a"].read()
    assert sorted(pushed.resources[i].type_url for i in range(2)) == [CLUSTER, CLUSTER]
    # b was not pushed: its next message answers its own LDS request.
    await calls["b"].write(DiscoveryRequest(type_url=LISTENER))
    assert (await calls["b"].read()).type_url == LISTENER
    assert status.get("a.default").of(CLUSTER).state == "STALE"  # type: ignore[union-attr]
    assert status.get("b.default").of(CLUSTER).state == "SYNCED"  # type: ignore[union-attr]
    for call in calls.values():
        call.cancel()


async def test_nack_is_recorded_with_envoys_message(
    served: Served,
) -> None:
    """A NACK shows as NACKED with the error detail; the proxy is not sent the same again."""
    cache, status, channel, registry = served
    cache.set_snapshot("a.default", snap("x"))
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    await call.write(first("a"))
    response = await call.read()
    nack = DiscoveryRequest(type_url=CLUSTER, response_nonce=response.nonce)
    nack.error_detail.code = 13
    nack.error_detail.message = "Invalid duration: Expected positive duration"
    await call.write(nack)
    await call.write(DiscoveryRequest(type_url=LISTENER))
    assert (await call.read()).type_url == LISTENER  # nothing was re-sent for CDS
    cds = status.get("a.default").of(CLUSTER)  # type: ignore[union-attr]
    assert cds.state == "NACKED" and cds.nack_message.startswith("Invalid duration")
    assert (registry.get_sample_value("mixer_pilot_xds_nacks_total", {"type": "CDS"}) or 0) >= 1
    call.cancel()


async def test_a_malformed_node_id_is_refused(
    served: Served,
) -> None:
    """A node id that is not Istio's TYPE~IP~NAME.NS~... ends the stream PERMISSION_DENIED."""
    _, _, channel, _ = served
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    request = DiscoveryRequest(type_url=CLUSTER)
    request.node.id = "frontend"
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call.read()
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
