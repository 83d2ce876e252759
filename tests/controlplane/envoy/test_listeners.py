"""controlplane.envoy.listeners: the HTTP connection manager, tracing, the listener."""

from __future__ import annotations

from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)

from controlplane.envoy.filters import router_filter
from controlplane.envoy.listeners import http_connection_manager, listener, tracing_config
from controlplane.envoy.routes import route_configuration


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
