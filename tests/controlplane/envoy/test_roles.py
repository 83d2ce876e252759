"""controlplane.envoy.roles: sidecar, ingress and egress gateways composed from the pieces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import HttpGrpcAccessLogConfig
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthzPerRoute
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext

from controlplane.envoy.mesh import EGRESS, FRONTEND, INGRESS
from controlplane.envoy.model import (
    EgressRoute,
    Endpoint,
    MeshTls,
    MixerServices,
    ProxyOptions,
    TcpInbound,
    TcpOutbound,
    Upstream,
)
from controlplane.envoy.ratelimit_actions import action_for
from controlplane.envoy.render import to_yaml
from controlplane.envoy.roles import (
    egress_gateway,
    ingress_gateway,
    sidecar,
    sidecar_resources,
)
from envoy_mixer.dev import procs

SERVICES = MixerServices()
BACKEND_UP = Upstream("backend", Endpoint("127.0.0.1", 8101))
EXT_AUTHZ = "envoy.filters.http.ext_authz"


def _hcm(config: Bootstrap, name: str) -> HttpConnectionManager:
    (listener,) = [item for item in config.static_resources.listeners if item.name == name]
    hcm = HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def _cluster(config: Bootstrap, name: str) -> Cluster:
    (found,) = [c for c in config.static_resources.clusters if c.name == name]
    return found


def _authz(settings: object) -> ExtAuthzPerRoute:
    out = ExtAuthzPerRoute()
    assert settings.Unpack(out)  # type: ignore[attr-defined]
    return out


def _sidecar(**options: object) -> Bootstrap:
    return sidecar(FRONTEND, SERVICES, ProxyOptions(**options),  # type: ignore[arg-type]
                   inbound_port=8091, app=Endpoint("127.0.0.1", 8090), outbound_port=8092,
                   upstreams=[BACKEND_UP])


def test_sidecar_inbound_guards_the_app_with_identity() -> None:
    """Inbound: health route, app route, workload identity for ext_authz, peer response headers."""
    config = _sidecar(ratelimit_domain="frontend")
    assert config.node.id == "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"
    inbound = _hcm(config, "inbound")
    # Plaintext (no certificate): client-sent peer metadata is removed first.
    assert [f.name for f in inbound.http_filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.header_mutation", "envoy.filters.http.header_to_metadata",
        EXT_AUTHZ, "envoy.filters.http.ratelimit", "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router"]
    assert inbound.use_remote_address.value is False
    (vhost,) = inbound.route_config.virtual_hosts
    assert [r.name for r in vhost.routes] == ["health", "inbound"]
    assert vhost.routes[1].route.cluster == "inbound|8080||"
    ext = _authz(vhost.typed_per_filter_config[EXT_AUTHZ]).check_settings.context_extensions
    assert ext["namespace"] == "default" and ext["label.app"] == "frontend"
    assert {h.header.key for h in vhost.response_headers_to_add} == {
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"}
    _cluster(config, "inbound|8080||")


def test_sidecar_outbound_routes_by_host_without_authz() -> None:
    """Outbound: one vhost per upstream (Host rewritten to the FQDN), a 404 catch-all, no authz."""
    outbound = _hcm(_sidecar(), "outbound")
    assert outbound.http_filters[0].name == "envoy.filters.http.header_to_metadata"
    upstream, unknown = outbound.route_config.virtual_hosts
    assert upstream.name == "outbound|8080||backend.default.svc.cluster.local"
    assert "backend.default:8080" in upstream.domains
    assert upstream.routes[0].route.host_rewrite_literal == "backend.default.svc.cluster.local"
    assert {h.header.key for h in upstream.request_headers_to_add} == {
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"}
    assert _authz(upstream.typed_per_filter_config[EXT_AUTHZ]).disabled
    assert unknown.routes[0].direct_response.status == 404
    assert _authz(unknown.typed_per_filter_config[EXT_AUTHZ]).disabled


def test_sidecar_without_outbound_port_has_only_inbound() -> None:
    """No outbound_port: one listener, no upstream clusters, no ratelimit filter without domain."""
    resources = sidecar_resources(FRONTEND, SERVICES, ProxyOptions(), inbound_port=8091,
                                  app=Endpoint("127.0.0.1", 8090), upstreams=[BACKEND_UP])
    assert [item.name for item in resources.listeners] == ["inbound"]
    assert [c.name for c in resources.clusters] == [
        "inbound|8080||", "mixer_authz", "mixer_ratelimit", "mixer_telemetry"]


def test_rate_limits_apply_to_inbound_not_outbound() -> None:
    """Derived rate limits go on the inbound virtual host only."""
    config = _sidecar(rate_limits=((action_for("remote_address", None),),))
    assert len(_hcm(config, "inbound").route_config.virtual_hosts[0].rate_limits) == 1
    assert all(not v.rate_limits for v in _hcm(config, "outbound").route_config.virtual_hosts)


def test_ingress_gateway_is_the_edge() -> None:
    """Ingress: use_remote_address, peer headers stripped then stashed, Host rewritten."""
    config = ingress_gateway(INGRESS, SERVICES, ProxyOptions(ratelimit_domain="ingress"),
                             port=8080, upstream=Upstream("frontend", Endpoint("127.0.0.1", 8091)))
    assert config.node.id.startswith("router~")
    hcm = _hcm(config, "ingress")
    assert hcm.use_remote_address.value is True
    assert [f.name for f in hcm.http_filters[:2]] == [
        "envoy.filters.http.header_mutation", "envoy.filters.http.header_to_metadata"]
    route = hcm.route_config.virtual_hosts[0].routes[1].route
    assert route.cluster == "outbound|8080||frontend.default.svc.cluster.local"
    assert route.host_rewrite_literal == "frontend.default.svc.cluster.local"
    access = hcm.access_log[0]
    assert access.name == "envoy.access_loggers.http_grpc"


def test_egress_gateway_forwards_through_the_dns_cache() -> None:
    """Egress: DFP filter before the router, route to the forward-proxy cluster, tracing on."""
    options = ProxyOptions(ratelimit_domain="egress", tracing=Endpoint("127.0.0.1", 4317))
    config = egress_gateway(EGRESS, SERVICES, options, port=8110)
    hcm = _hcm(config, "egress")
    assert [f.name for f in hcm.http_filters][-2:] == [
        "envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"]
    assert hcm.route_config.virtual_hosts[0].routes[1].route.cluster == (
        "egress_dynamic_forward_proxy")
    assert hcm.HasField("tracing")
    assert [c.name for c in config.static_resources.clusters] == [
        "egress_dynamic_forward_proxy", "mixer_authz", "mixer_ratelimit", "mixer_telemetry",
        "mixer_tracing"]


def test_egress_gateway_with_a_certificate_takes_mesh_mtls_per_its_mode() -> None:
    """tls: STRICT one mTLS chain, PERMISSIVE mTLS and plaintext (no app to pass TLS to)."""
    for mode, chains in (("STRICT", ["mtls"]), ("PERMISSIVE", ["mtls", "plaintext"])):
        config = egress_gateway(EGRESS, SERVICES, ProxyOptions(
            tls=MeshTls("/certs/egress", mode)), port=8110)  # type: ignore[arg-type]
        (egress,) = config.static_resources.listeners
        assert [c.name for c in egress.filter_chains] == chains, mode
        hcm = HttpConnectionManager()
        assert egress.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        # No client certificate is handed to external hosts; client peer headers go first.
        assert hcm.forward_client_cert_details == HttpConnectionManager.SANITIZE
        assert hcm.http_filters[0].name == "envoy.filters.http.header_mutation"


def test_sidecar_sends_egress_hosts_to_the_gateway_over_istio_mutual() -> None:
    """EgressRoute: a vhost for the external hosts, Host kept, ISTIO_MUTUAL to the gateway."""
    egress = EgressRoute.to(Endpoint("127.0.0.1", 8110), ("httpbin.org", "*.example.com"))
    config = sidecar(FRONTEND, SERVICES, ProxyOptions(tls=MeshTls("/certs/frontend")),
                     inbound_port=8091, app=Endpoint("127.0.0.1", 8090), outbound_port=8092,
                     upstreams=[BACKEND_UP], egress=egress)
    name = "outbound|80||istio-egressgateway.istio-system.svc.cluster.local"
    vhosts = {v.name: v for v in _hcm(config, "outbound").route_config.virtual_hosts}
    route = vhosts["egress-gateway"].routes[0].route
    assert list(vhosts["egress-gateway"].domains) == ["httpbin.org", "*.example.com"]
    assert route.cluster == name and not route.host_rewrite_literal
    context = UpstreamTlsContext()
    assert _cluster(config, name).transport_socket.typed_config.Unpack(context)
    assert context.sni == "outbound_.80_._.istio-egressgateway.istio-system.svc.cluster.local"
    (san,) = context.common_tls_context.combined_validation_context.default_validation_context \
        .match_typed_subject_alt_names
    assert san.matcher.exact == (
        "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account")
    with pytest.raises(ValueError, match="outbound_port"):
        sidecar_resources(FRONTEND, SERVICES, ProxyOptions(), inbound_port=8091,
                          app=Endpoint("127.0.0.1", 8090), egress=egress)


@pytest.mark.slow
def test_egress_gateway_reaches_only_hosts_a_policy_allows(
    tmp_path: Path, free_port: Callable[[], int],
    start_envoy: Callable[..., procs.ManagedProcess],
    start_mixer: Callable[..., procs.ManagedProcess],
) -> None:
    """Through the egress gateway, an allowed Host is proxied (200), any other gets 403."""
    import http.server
    import threading

    from envoy_mixer.dev.up import http_get

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"external\n")

        def log_message(self, *args: object) -> None:
            pass

    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    app_port = app.server_address[1]
    try:
        policy = tmp_path / "egress-policy.yaml"  # not egress.yaml: start_envoy writes that
        policy.write_text(f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
    - to: [{{operation: {{hosts: ["127.0.0.1:{app_port}"]}}}}]
""")
        authz, authz_admin, port, admin = free_port(), free_port(), free_port(), free_port()
        start_mixer(["authz", "--policy", str(policy), "--listen", f"127.0.0.1:{authz}",
                     "--admin", f"127.0.0.1:{authz_admin}"], authz_admin)
        services = MixerServices(authz=Endpoint("127.0.0.1", authz),
                                 ratelimit=Endpoint("127.0.0.1", free_port()),
                                 telemetry=Endpoint("127.0.0.1", free_port()))
        config = egress_gateway(EGRESS, services, ProxyOptions(
            admin=Endpoint("127.0.0.1", admin), ratelimit_domain="egress"), port=port)
        start_envoy(to_yaml(config), admin, name="egress")
        url = f"http://127.0.0.1:{port}/"
        allowed = http_get(url, headers={"Host": f"127.0.0.1:{app_port}"})
        assert (allowed.status, allowed.body) == (200, "external\n")
        denied = http_get(url, headers={"Host": f"localhost:{app_port}"})
        assert denied.status == 403
    finally:
        app.shutdown()
        app.server_close()


def test_sidecar_with_a_certificate_speaks_mesh_mtls_over_http_and_tcp() -> None:
    """tls: STRICT inbound (HTTP and TCP), ISTIO_MUTUAL clusters, upstream SAN log tags."""
    tls = MeshTls("/certs/frontend")
    tcp_up = Upstream("db", Endpoint("127.0.0.1", 9500), port=5432)
    config = sidecar(
        FRONTEND, SERVICES, ProxyOptions(tls=tls), inbound_port=8091,
        app=Endpoint("127.0.0.1", 8090), outbound_port=8092,
        upstreams=[BACKEND_UP, Upstream("legacy", Endpoint("127.0.0.1", 8201), mtls=False)],
        tcp_inbound=[TcpInbound(8094, 9000, Endpoint("127.0.0.1", 9001))],
        tcp_outbound=[TcpOutbound(8095, tcp_up)])
    listeners = {item.name: item for item in config.static_resources.listeners}
    assert set(listeners) == {"inbound", "outbound", "inbound_tcp_9000", "outbound_tcp_8095"}
    for name in ("inbound", "inbound_tcp_9000"):
        assert [c.name for c in listeners[name].filter_chains] == ["mtls"], name
    assert listeners["inbound_tcp_9000"].filter_chains[0].filters[0].name == (
        "envoy.filters.network.tcp_proxy")
    secured = [c.name for c in config.static_resources.clusters
               if c.HasField("transport_socket")]
    assert secured == ["outbound|8080||backend.default.svc.cluster.local",
                       "outbound|5432||db.default.svc.cluster.local"]
    assert _cluster(config, "inbound|9000||").metadata.filter_metadata["istio"]
    # mTLS chain: no strip (the peer is verified); the outbound log tags upstream SANs.
    names = [f.name for f in _hcm(config, "inbound").http_filters]
    assert names.count("envoy.filters.http.header_mutation") == 1  # the direct-peer one only
    outbound_log = HttpGrpcAccessLogConfig()
    assert _hcm(config, "outbound").access_log[0].typed_config.Unpack(outbound_log)
    assert "upstream_peer_uri_san" in {t.tag for t in outbound_log.common_config.custom_tags}
