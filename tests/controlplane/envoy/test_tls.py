"""controlplane.envoy.tls: Istio's ISTIO_MUTUAL sockets, certificates from file SDS."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3.common_pb2 import SubjectAltNameMatcher
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    DownstreamTlsContext,
    UpstreamTlsContext,
)

from controlplane.envoy.model import Endpoint, MeshTls, Upstream
from controlplane.envoy.tls import downstream_tls, sds_secret, upstream_tls

TLS = MeshTls("/etc/istio/certs/frontend/", trust_domain="example.org")


def test_secrets_come_from_the_watched_cert_dir() -> None:
    """default/ROOTCA are read from <dir>/<name>.json, and the directory itself is watched."""
    secret = sds_secret("/etc/istio/certs/frontend/", "ROOTCA")
    assert secret.name == "ROOTCA"
    source = secret.sds_config.path_config_source
    assert source.path == "/etc/istio/certs/frontend/ROOTCA.json"
    assert source.watched_directory.path == "/etc/istio/certs/frontend"


def test_server_requires_a_client_certificate_from_the_mesh_root() -> None:
    """Downstream: our cert, ROOTCA validation, client cert required, ALPN h2/http1.1."""
    context = DownstreamTlsContext()
    socket = downstream_tls(TLS)
    assert socket.name == "envoy.transport_sockets.tls"
    assert socket.typed_config.Unpack(context)
    assert context.require_client_certificate.value is True
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.validation_context_sds_secret_config.name == "ROOTCA"
    assert list(common.alpn_protocols) == ["h2", "http/1.1"]


def test_client_checks_the_destination_spiffe_id_and_sends_istio_sni() -> None:
    """Upstream: SNI outbound_.PORT_._.FQDN, ALPN istio, exact URI SAN of the destination SA."""
    up = Upstream("ratings", Endpoint("10.0.0.7", 15006), "shop", 9080,
                  service_account="bookinfo-ratings")
    context = UpstreamTlsContext()
    assert upstream_tls(TLS, up).typed_config.Unpack(context)
    assert context.sni == "outbound_.9080_._.ratings.shop.svc.cluster.local"
    common = context.common_tls_context
    assert list(common.alpn_protocols) == ["istio"]
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    combined = common.combined_validation_context
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.san_type == SubjectAltNameMatcher.URI
    assert san.matcher.exact == "spiffe://example.org/ns/shop/sa/bookinfo-ratings"
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
