"""Golden generation from the demo mesh: each proxy's resources as Istio's builder would name
and shape them (``UPDATE_GOLDEN=1`` rewrites the files after a deliberate change)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.ca.authority import create_root
from controlplane.ca.identity import SpiffeId
from controlplane.mesh import load_mesh
from controlplane.mesh.model import Mesh
from controlplane.pilot import Context, generate_all
from tests.controlplane.pilot.golden import view

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "controlplane" / "mesh" / "testdata" / "demo"
GOLDEN = HERE / "testdata"
PROXIES = ("backend-0.default", "frontend-0.default", "istio-egressgateway.istio-system",
           "istio-ingressgateway.istio-system")


@pytest.fixture(scope="module")
def demo() -> Mesh:
    return load_mesh(DEMO)


@pytest.mark.parametrize("proxy", PROXIES)
def test_demo_mesh_golden(demo: Mesh, proxy: str) -> None:
    """Each demo proxy's listeners, routes, clusters and endpoints match its golden file."""
    got = view(generate_all(demo, Context())[proxy])
    path = GOLDEN / f"demo-{proxy}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_every_workload_entry_is_a_proxy(demo: Mesh) -> None:
    """The demo's four WorkloadEntries give four proxies keyed NAME.NAMESPACE."""
    assert tuple(sorted(generate_all(demo, Context()))) == PROXIES


def test_istio_names(demo: Mesh) -> None:
    """Clusters are outbound|PORT|SUBSET|HOST and inbound|PORT||, listeners BIND_PORT."""
    frontend = generate_all(demo, Context())["frontend-0.default"]
    assert [x.name for x in frontend.listeners] == ["127.0.0.1_8091", "127.0.0.1_8092"]
    names = [c.name for c in frontend.clusters]
    assert "inbound|8091||" in names
    assert "outbound|8080|v1|backend.default.svc.cluster.local" in names
    assert "outbound|8080||backend.default.svc.cluster.local" in names


def test_secrets_and_mtls_only_with_a_certificate(demo: Mesh) -> None:
    """With a workload certificate the proxy gets `default` and `ROOTCA`, and its inbound
    listener takes mTLS (PERMISSIVE: tls_inspector, mTLS, plaintext and TLS passthrough)."""
    now = datetime.now(UTC)
    ca = create_root("cluster.local", now=now)
    issued = ca.issue(SpiffeId("cluster.local", "default", "backend"), now=now)
    plain = generate_all(demo, Context())["backend-0.default"]
    secure = generate_all(demo, Context(mtls=True, certificates={
        "backend-0.default": issued}))["backend-0.default"]
    assert plain.secrets == () and len(plain.listeners[0].filter_chains) == 1
    assert [s.name for s in secure.secrets] == ["default", "ROOTCA"]
    inbound = secure.listeners[0]
    assert [c.filter_chain_match.transport_protocol for c in inbound.filter_chains] == [
        "tls", "raw_buffer", "tls"]
    passthrough = inbound.filter_chains[2]
    assert not passthrough.filter_chain_match.application_protocols
    assert passthrough.filters[0].name == "envoy.filters.network.tcp_proxy"
    assert inbound.listener_filters[0].name == "envoy.filters.listener.tls_inspector"


def test_virtual_service_and_destination_rule_features_golden() -> None:
    """Matches, weights, redirect, rewrite, retries, timeout, fault, headers, load balancer,
    pool, outlier detection, ISTIO_MUTUAL and SIMPLE TLS, EDS subsets (features-in/)."""
    mesh = load_mesh(GOLDEN / "features-in")
    got = view(generate_all(mesh, Context(trust_domain="cluster.local"))["client.shop"])
    path = GOLDEN / "features-out.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_gateway_tls_servers_golden() -> None:
    """Gateway servers: SIMPLE and MUTUAL from files matched by SNI on one port (tls_inspector),
    an HTTP server with httpsRedirect (require_tls ALL) (features-in/)."""
    mesh = load_mesh(GOLDEN / "features-in")
    got = view(generate_all(mesh, Context())["shop-gateway.shop"])
    path = GOLDEN / "gateway-tls-out.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_auto_mtls_to_mesh_workloads_unless_the_rule_sets_tls(demo: Mesh) -> None:
    """With the mesh CA, a cluster to in-mesh workloads is ISTIO_MUTUAL (SNI, SPIFFE SAN) when
    no DestinationRule sets tls; the backend's explicit DISABLE stays plaintext."""
    from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

    generated = generate_all(demo, Context(mtls=True))
    ingress = {c.name: c for c in generated["istio-ingressgateway.istio-system"].clusters}
    frontend = ingress["outbound|8080||frontend.default.svc.cluster.local"]
    context = UpstreamTlsContext()
    frontend.transport_socket.typed_config.Unpack(context)
    assert context.sni == "outbound_.8080_._.frontend.default.svc.cluster.local"
    sans = context.common_tls_context.combined_validation_context.default_validation_context
    assert [m.matcher.exact for m in sans.match_typed_subject_alt_names] == [
        "spiffe://cluster.local/ns/default/sa/frontend"]
    backend = {c.name: c for c in generated["frontend-0.default"].clusters}[
        "outbound|8080||backend.default.svc.cluster.local"]
    assert not backend.HasField("transport_socket")
    egress = {c.name: c for c in generated["istio-egressgateway.istio-system"].clusters}
    assert not egress["outbound|80||httpbin.org"].HasField("transport_socket")


def test_tcp_ports_golden() -> None:
    """TCP ports: the server's inbound tcp_proxy to inbound|PORT|| (STRICT mTLS), the client's
    egress tcp_proxy to outbound|PORT||HOST (auto ISTIO_MUTUAL), TCP access logs (tcp-in/)."""
    mesh = load_mesh(GOLDEN / "tcp-in")
    generated = generate_all(mesh, Context(mtls=True))
    got = {key: view(resources) for key, resources in sorted(generated.items())}
    path = GOLDEN / "tcp-out.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text())


def test_tcp_inbound_permissive_and_without_the_ca() -> None:
    """Without a PeerAuthentication (PERMISSIVE) the TCP inbound has mTLS, plaintext and TLS
    passthrough chains, all proxying to the app; without the mesh CA, one plaintext chain."""
    from dataclasses import replace

    mesh = replace(load_mesh(GOLDEN / "tcp-in"), peer_authentications=())
    [permissive] = generate_all(mesh, Context(mtls=True))["db-0.data"].listeners
    assert [(c.name, c.filter_chain_match.transport_protocol)
            for c in permissive.filter_chains] == [
        ("mtls", "tls"), ("plaintext", "raw_buffer"), ("tls-passthrough", "tls")]
    assert {f.name for c in permissive.filter_chains for f in c.filters} == {
        "envoy.filters.network.tcp_proxy"}
    [plain] = generate_all(mesh, Context())["db-0.data"].listeners
    assert [c.name for c in plain.filter_chains] == ["plaintext"]
    assert not plain.filter_chains[0].HasField("transport_socket")
