"""controlplane.envoy.listeners: the HTTP connection manager, tracing, listeners per mTLS mode."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from controlplane.envoy.filters import router_filter
from controlplane.envoy.listeners import (
    http_connection_manager,
    inbound_listener,
    listener,
    tracing_config,
)
from controlplane.envoy.model import InboundMode, MeshTls
from controlplane.envoy.routes import route_configuration
from controlplane.envoy.tls import downstream_tls


def _hcm(*, edge: bool = False) -> HttpConnectionManager:
    return http_connection_manager(
        stat_prefix="inbound", route_config=route_configuration("inbound", []),
        http_filters=[router_filter()], access_logs=[], edge=edge)


def test_hcm_normalizes_paths_and_sets_timeouts() -> None:
    """Paths are normalized, slashes merged, escaped slashes redirected; timeouts explicit."""
    hcm = _hcm()
    assert hcm.stat_prefix == "inbound" and hcm.route_config.name == "inbound"
    assert hcm.codec_type == HttpConnectionManager.AUTO
    assert hcm.normalize_path.value is True and hcm.merge_slashes is True
    assert hcm.path_with_escaped_slashes_action == HttpConnectionManager.UNESCAPE_AND_REDIRECT
    assert hcm.request_timeout.seconds == 30 and hcm.stream_idle_timeout.seconds == 60
    assert hcm.common_http_protocol_options.idle_timeout.seconds == 300
    assert not hcm.HasField("tracing")


def test_edge_decides_use_remote_address_explicitly() -> None:
    """use_remote_address is set (true or false), never left to Envoy's default."""
    assert _hcm(edge=True).use_remote_address.value is True
    inner = _hcm(edge=False)
    assert inner.HasField("use_remote_address") and inner.use_remote_address.value is False


def test_tracing_samples_everything_to_the_collector() -> None:
    """OpenTelemetry tracing to mixer_tracing, 100% sampling, named after the service."""
    tracing = tracing_config("frontend.default")
    assert tracing.random_sampling.value == 100
    assert tracing.provider.name == "envoy.tracers.opentelemetry"
    config = OpenTelemetryConfig()
    assert tracing.provider.typed_config.Unpack(config)
    assert config.service_name == "frontend.default"
    assert config.grpc_service.envoy_grpc.cluster_name == "mixer_tracing"


def test_listener_holds_one_hcm() -> None:
    """A listener on host:port with a single filter chain holding the packed HCM."""
    out = listener("inbound", "0.0.0.0", 15006, _hcm())
    assert out.name == "inbound"
    assert out.address.socket_address.address == "0.0.0.0"
    assert out.address.socket_address.port_value == 15006
    (chain,) = out.filter_chains
    (hcm_filter,) = chain.filters
    assert hcm_filter.name == "envoy.filters.network.http_connection_manager"
    unpacked = HttpConnectionManager()
    assert hcm_filter.typed_config.Unpack(unpacked) and unpacked == _hcm()


def _inbound(mode: InboundMode) -> Listener:
    server = downstream_tls(MeshTls("/certs")) if mode != "DISABLE" else None
    return inbound_listener("inbound", "127.0.0.1", 15006, mode, mtls=_hcm(edge=False),
                            plaintext=_hcm(edge=True), server_tls=server)


def test_strict_inbound_is_one_mtls_chain() -> None:
    """STRICT: a single chain with the server TLS socket, no inspector, no plaintext chain."""
    out = _inbound("STRICT")
    assert [c.name for c in out.filter_chains] == ["mtls"]
    assert out.filter_chains[0].transport_socket.name == "envoy.transport_sockets.tls"
    assert not out.listener_filters


def test_permissive_inbound_inspects_and_splits_tls_from_plaintext() -> None:
    """PERMISSIVE: tls_inspector, mTLS chain on Istio's ALPNs, plaintext chain on raw_buffer."""
    out = _inbound("PERMISSIVE")
    assert [f.name for f in out.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    mtls, plain = out.filter_chains
    assert (mtls.name, plain.name) == ("mtls", "plaintext")
    assert mtls.filter_chain_match.transport_protocol == "tls"
    assert "istio" in mtls.filter_chain_match.application_protocols
    assert plain.filter_chain_match.transport_protocol == "raw_buffer"
    assert not plain.HasField("transport_socket")
    hcm = HttpConnectionManager()
    assert plain.filters[0].typed_config.Unpack(hcm) and hcm.use_remote_address.value is True


def test_permissive_passes_tls_without_istio_alpn_through_to_the_app() -> None:
    """PERMISSIVE with a TCP proxy: a third chain on ``tls`` alone, no socket (Istio's)."""
    proxy = TcpProxy(stat_prefix="inbound_passthrough", cluster="inbound|8080||")
    out = inbound_listener("inbound", "127.0.0.1", 15006, "PERMISSIVE", mtls=_hcm(),
                           plaintext=_hcm(), server_tls=downstream_tls(MeshTls("/certs")),
                           passthrough=proxy)
    assert [c.name for c in out.filter_chains] == ["mtls", "plaintext", "tls-passthrough"]
    chain = out.filter_chains[2]
    assert chain.filter_chain_match.transport_protocol == "tls"
    assert not chain.filter_chain_match.application_protocols
    assert not chain.HasField("transport_socket")
    assert chain.filters[0].name == "envoy.filters.network.tcp_proxy"
    # STRICT has no passthrough: TLS without a mesh certificate is refused there.
    strict = inbound_listener("inbound", "127.0.0.1", 15006, "STRICT", mtls=_hcm(),
                              plaintext=_hcm(), server_tls=downstream_tls(MeshTls("/certs")),
                              passthrough=proxy)
    assert [c.name for c in strict.filter_chains] == ["mtls"]


def test_disable_inbound_is_plaintext_only() -> None:
    """DISABLE: one plaintext chain; any other mode without a certificate is an error."""
    out = _inbound("DISABLE")
    assert [c.name for c in out.filter_chains] == ["plaintext"]
    assert not out.filter_chains[0].HasField("transport_socket")
    with pytest.raises(ValueError, match="STRICT needs a certificate"):
        inbound_listener("inbound", "127.0.0.1", 1, "STRICT", mtls=_hcm(), plaintext=_hcm(),
                         server_tls=None)


def test_mtls_chain_hands_the_verified_peer_to_the_app() -> None:
    """client_cert: XFCC replaced by the verified peer's (URI); otherwise Envoy's default."""
    hcm = http_connection_manager(
        stat_prefix="inbound", route_config=route_configuration("inbound", []),
        http_filters=[router_filter()], access_logs=[], edge=False, client_cert=True)
    assert hcm.forward_client_cert_details == HttpConnectionManager.SANITIZE_SET
    assert hcm.set_current_client_cert_details.uri is True
    assert _hcm().forward_client_cert_details == HttpConnectionManager.SANITIZE
