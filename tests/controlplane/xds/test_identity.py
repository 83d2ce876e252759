"""Proxy identity: node ids, the peer certificate's SPIFFE id, and the servicer's decision
(driven with a fake stream and a fake gRPC context carrying the peer certificate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from prometheus_client import CollectorRegistry

from controlplane.ca.authority import create_root
from controlplane.ca.identity import SpiffeId
from controlplane.pilot.secrets import workload_secrets
from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.identity import IdentityError, NodeId, authorize, peer_spiffe_ids
from controlplane.xds.server import AdsServer, XdsMetrics
from controlplane.xds.status import StatusBoard
from controlplane.xds.types import SECRET

NOW = datetime.now(UTC)
CA = create_root("cluster.local", now=NOW)
FRONTEND = SpiffeId("cluster.local", "default", "frontend")
NODE = "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"


def pem_of(identity: SpiffeId) -> bytes:
    cert = CA.issue(identity, now=NOW).certificate
    return cert.public_bytes(serialization.Encoding.PEM)


class Aborted(Exception):
    """What grpc.aio's context.abort raises."""


class FakeContext:
    def __init__(self, peer: SpiffeId | None) -> None:
        self._auth = {"x509_pem_cert": [pem_of(peer)]} if peer is not None else {}
        self.code: Any = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def abort(self, code: Any, details: str) -> None:
        self.code = code
        raise Aborted(details)


def test_node_id_parses_istios_format() -> None:
    """TYPE~IP~NAME.NS~NS.svc.cluster.local parses and renders back; junk is refused."""
    node = NodeId.parse(NODE)
    assert (node.proxy_type, node.ip, node.key) == ("sidecar", "127.0.0.1", "frontend-0.default")
    assert node.render() == NODE
    with pytest.raises(IdentityError) as bad:
        NodeId.parse("frontend")
    assert bad.value.reason == "bad_node_id"


def test_peer_identity_comes_from_the_certificate() -> None:
    """The SPIFFE URI SAN of the peer certificate; nothing for a plaintext peer."""
    assert peer_spiffe_ids({"x509_pem_cert": [pem_of(FRONTEND)]}) == (FRONTEND,)
    assert peer_spiffe_ids({}) == ()


@pytest.mark.parametrize(("peers", "expected", "reason"), [
    ((), FRONTEND, "no_peer_identity"),
    ((SpiffeId("cluster.local", "default", "third"),), FRONTEND, "identity_mismatch"),
    ((FRONTEND,), None, "unknown_workload"),
])
def test_authorize_refuses(peers: tuple[SpiffeId, ...], expected: SpiffeId | None,
                           reason: str) -> None:
    """No certificate, another identity, or a workload the mesh lacks: refused with a reason."""
    with pytest.raises(IdentityError) as refused:
        authorize(NodeId.parse(NODE), peers, lambda _n: expected)
    assert refused.value.reason == reason


async def _serve(server: AdsServer, context: FakeContext,
                 requests: asyncio.Queue[DiscoveryRequest | None]) -> list[DiscoveryResponse]:
    async def iterate() -> AsyncIterator[DiscoveryRequest]:
        while (item := await requests.get()) is not None:
            yield item

    out: list[DiscoveryResponse] = []
    try:
        async for response in server.StreamAggregatedResources(iterate(), context):
            out.append(response)
            if len(out) == 1:
                requests.put_nowait(None)
    except Aborted:
        pass
    return out


def _server(expected: dict[str, SpiffeId | None]) -> tuple[AdsServer, CollectorRegistry]:
    cache, registry = SnapshotCache(), CollectorRegistry()
    issued = CA.issue(FRONTEND, now=NOW)
    cache.set_snapshot("frontend-0.default", Snapshot.build({SECRET: workload_secrets(issued)}))
    server = AdsServer(cache, StatusBoard(), XdsMetrics(registry),
                       lambda node: expected.get(node.key))
    return server, registry


def _sds() -> DiscoveryRequest:
    request = DiscoveryRequest(type_url=SECRET, resource_names=["default", "ROOTCA"])
    request.node.id = NODE
    return request


async def test_the_proven_workload_gets_its_secrets() -> None:
    """A peer whose certificate names the node's workload is served its `default` secret."""
    server, _ = _server({"frontend-0.default": FRONTEND})
    requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
    requests.put_nowait(_sds())
    [response] = await _serve(server, FakeContext(FRONTEND), requests)
    assert len(response.resources) == 2


async def test_a_peer_claiming_another_workload_gets_nothing_and_is_counted() -> None:
    """The certificate of `third` with a node claiming frontend-0: aborted, nothing sent."""
    server, registry = _server({"frontend-0.default": FRONTEND})
    requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
    requests.put_nowait(_sds())
    context = FakeContext(SpiffeId("cluster.local", "default", "third"))
    assert await _serve(server, context, requests) == []
    assert str(context.code).endswith("PERMISSION_DENIED")
    assert registry.get_sample_value("mixer_pilot_identity_rejected_total",
                                     {"reason": "identity_mismatch"}) == 1


async def test_a_changed_identity_ends_the_stream() -> None:
    """When an edit gives the workload another service account, its open stream is ended
    instead of being pushed the new identity's secrets."""
    expected: dict[str, SpiffeId | None] = {"frontend-0.default": FRONTEND}
    server, registry = _server(expected)
    requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
    requests.put_nowait(_sds())
    context = FakeContext(FRONTEND)

    async def iterate() -> AsyncIterator[DiscoveryRequest]:
        while (item := await requests.get()) is not None:
            yield item

    stream = server.StreamAggregatedResources(iterate(), context)
    first = await stream.__anext__()
    assert len(first.resources) == 2
    expected["frontend-0.default"] = SpiffeId("cluster.local", "default", "renamed")
    issued = CA.issue(expected["frontend-0.default"], now=NOW)  # type: ignore[arg-type]
    server.cache.set_snapshot("frontend-0.default",
                              Snapshot.build({SECRET: workload_secrets(issued)}))
    with pytest.raises(Aborted):
        await stream.__anext__()
    assert registry.get_sample_value("mixer_pilot_identity_rejected_total",
                                     {"reason": "identity_changed"}) == 1


def test_the_serving_certificate_is_reissued_at_half_life() -> None:
    """The control plane's own certificate (istiod's identity) is kept until half of its
    lifetime is gone, then replaced for the next handshake."""
    from datetime import timedelta

    from controlplane.xds.identity import ServingCertificate

    now = [NOW]
    serving = ServingCertificate(CA, clock=lambda: now[0], ttl=timedelta(hours=2))
    first = serving.issued.certificate.serial_number
    assert serving.refresh() is None
    now[0] += timedelta(minutes=61)
    assert serving.refresh() is not None
    assert serving.issued.certificate.serial_number != first
    assert peer_spiffe_ids({"x509_pem_cert": [serving.issued.chain_pem]}) == (
        SpiffeId("cluster.local", "istio-system", "istiod"),)
