"""controlplane.envoy.mesh: the demo mesh laid out for `mixer up` and for docker-compose."""

from __future__ import annotations

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)

from controlplane.envoy.mesh import (
    MeshSecurity,
    compose_mesh,
    local_mesh,
    render_mesh,
    service_admin_ports,
)
from controlplane.envoy.model import Endpoint
from controlplane.envoy.ratelimit_actions import action_for
from controlplane.security import PeerAuthentication, load_text

MESH_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def test_render_mesh_gives_every_proxy() -> None:
    """One bootstrap per proxy of the mesh, each sending its own rate-limit domain."""
    rendered = render_mesh(local_mesh())
    assert set(rendered) == {"ingress-gateway", "sidecar-frontend", "sidecar-backend",
                             "egress-gateway"}
    assert rendered["sidecar-frontend"].admin.address.socket_address.port_value == 8093


def test_rate_limits_go_to_the_proxies_of_their_domain() -> None:
    """Actions keyed by domain reach only the proxy sending that domain."""
    actions = ((action_for("remote_address", None),),)
    rendered = render_mesh(local_mesh(), {"ingress": actions})

    def vhost_limits(role: str) -> int:
        hcm = HttpConnectionManager()
        listener = rendered[role].static_resources.listeners[0]
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        return len(hcm.route_config.virtual_hosts[0].rate_limits)

    assert vhost_limits("ingress-gateway") == 1
    assert vhost_limits("sidecar-backend") == 0


def test_port_base_moves_everything() -> None:
    """With a port base, proxies and services move together (services from base+40)."""
    mesh = local_mesh(20000)
    assert mesh.ingress == Endpoint("127.0.0.1", 20000)
    assert mesh.services.authz == Endpoint("127.0.0.1", 20040)
    assert service_admin_ports(20000) == {"authz": 20041, "ratelimit": 20043,
                                          "telemetry": 20045}
    assert service_admin_ports(None)["authz"] == 9192


def test_compose_mesh_uses_service_names_and_dns_clusters() -> None:
    """Compose configs dial services by DNS name (STRICT_DNS), listen on 0.0.0.0, trace."""
    config = render_mesh(compose_mesh())["ingress-gateway"]
    clusters = {c.name: c for c in config.static_resources.clusters}
    authz = clusters["mixer_authz"]
    assert authz.type == Cluster.STRICT_DNS
    address = authz.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("authz", 9191)
    assert "mixer_tracing" in clusters
    assert config.static_resources.listeners[0].address.socket_address.address == "0.0.0.0"


def _policies(text: str) -> tuple[PeerAuthentication, ...]:
    return tuple(load_text(text, "pa.yaml"))


def _chains(bootstrap: Bootstrap, name: str = "inbound") -> list[str]:
    (inbound,) = [x for x in bootstrap.static_resources.listeners if x.name == name]
    return [c.name for c in inbound.filter_chains]


def _tls_clusters(bootstrap: Bootstrap) -> list[str]:
    return [c.name for c in bootstrap.static_resources.clusters if c.HasField("transport_socket")]


def test_mesh_security_follows_peer_authentication() -> None:
    """Mesh-wide STRICT, backend PERMISSIVE by selector: chains per proxy, mTLS everywhere."""
    policies = _policies(MESH_STRICT + """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: PERMISSIVE}
""")
    rendered = render_mesh(local_mesh(), security=MeshSecurity("/certs/", policies))
    assert _chains(rendered["sidecar-frontend"]) == ["mtls"]
    assert _chains(rendered["sidecar-backend"]) == ["mtls", "plaintext", "tls-passthrough"]
    assert _tls_clusters(rendered["sidecar-frontend"]) == [
        "outbound|8080||backend.default.svc.cluster.local",
        "outbound|8110||istio-egressgateway.istio-system.svc.cluster.local"]
    assert _chains(rendered["egress-gateway"], "egress") == ["mtls"]
    assert _tls_clusters(rendered["ingress-gateway"]) == [
        "outbound|8080||frontend.default.svc.cluster.local"]
    assert MeshSecurity("/certs/", policies).tls("ingress-gateway").cert_dir == "/certs/ingress"


def test_a_disabled_destination_is_called_in_plaintext() -> None:
    """--mtls DISABLE (or a DISABLE policy): plaintext inbound and no client TLS to it."""
    rendered = render_mesh(local_mesh(), security=MeshSecurity(
        "/certs", _policies(MESH_STRICT), mode_override="DISABLE"))
    assert _chains(rendered["sidecar-backend"]) == ["plaintext"]
    assert _tls_clusters(rendered["sidecar-frontend"]) == []


def test_without_security_the_mesh_is_plaintext() -> None:
    """No MeshSecurity: no certificate anywhere, inbound plaintext (as DISABLE)."""
    rendered = render_mesh(local_mesh())
    assert _chains(rendered["sidecar-backend"]) == ["plaintext"]
    assert all(not _tls_clusters(b) for b in rendered.values())
