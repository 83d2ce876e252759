"""controlplane.envoy.filters: ext_authz, ratelimit, grpc_stats, the peer stash, the access log."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import (
    HttpGrpcAccessLogConfig,
    TcpGrpcAccessLogConfig,
)
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthz
from envoy.extensions.filters.http.grpc_stats.v3.config_pb2 import FilterConfig as GrpcStats
from envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2 import HeaderMutation
from envoy.extensions.filters.http.header_to_metadata.v3.header_to_metadata_pb2 import (
    Config as HeaderToMetadata,
)
from envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2 import RateLimit
from envoy.type.v3.http_status_pb2 import StatusCode

from controlplane.envoy.filters import (
    access_log,
    authz_disabled,
    authz_per_route,
    authz_with_istio_inputs,
    ext_authz_filter,
    grpc_stats_filter,
    http_filters,
    peer_request_strip_filter,
    peer_stash_filter,
    ratelimit_filter,
    tcp_access_log,
)
from controlplane.envoy.model import MixerServices, Workload
from extauthz import server

SERVICES = MixerServices()


def test_ext_authz_fails_closed_over_v3_grpc() -> None:
    """ext_authz calls mixer_authz over V3 with its timeout and denies (403) on errors."""
    f = ext_authz_filter(SERVICES)
    config = ExtAuthz()
    assert f.name == "envoy.filters.http.ext_authz" and f.typed_config.Unpack(config)
    assert config.transport_api_version == ApiVersion.V3
    assert config.grpc_service.envoy_grpc.cluster_name == "mixer_authz"
    assert config.grpc_service.timeout.nanos == 500_000_000
    assert config.failure_mode_allow is False
    assert config.include_peer_certificate is True
    assert config.status_on_error.code == StatusCode.Forbidden


def test_ratelimit_fails_open_with_headers() -> None:
    """ratelimit sends the domain to mixer_ratelimit over V3, fails open, adds x-ratelimit-*."""
    config = RateLimit()
    assert ratelimit_filter(SERVICES, "ingress").typed_config.Unpack(config)
    assert config.domain == "ingress" and config.request_type == "external"
    assert config.failure_mode_deny is False
    assert config.enable_x_ratelimit_headers == RateLimit.DRAFT_VERSION_03
    assert config.rate_limit_service.transport_api_version == ApiVersion.V3
    assert config.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "mixer_ratelimit"
    assert config.timeout.nanos == 250_000_000


def test_grpc_stats_emits_filter_state_without_per_method_stats() -> None:
    """grpc_stats puts message counts in filter state and keeps Envoy's stat names bounded."""
    config = GrpcStats()
    assert grpc_stats_filter().typed_config.Unpack(config)
    assert config.emit_filter_state is True
    assert config.HasField("stats_for_all_methods") and config.stats_for_all_methods.value is False


def test_peer_stash_moves_both_peer_headers_into_metadata() -> None:
    """Both peer response headers become string metadata in mixer.peer_response and are removed."""
    config = HeaderToMetadata()
    assert peer_stash_filter().typed_config.Unpack(config)
    assert [r.header for r in config.response_rules] == [
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"]
    for rule in config.response_rules:
        assert rule.remove is True
        assert rule.on_header_present.metadata_namespace == "mixer.peer_response"
        assert rule.on_header_present.key == rule.header
        assert rule.on_header_present.type == HeaderToMetadata.STRING
    assert not config.request_rules


def test_filter_chain_order() -> None:
    """Stash first (when asked), ext_authz, ratelimit (with a domain), grpc_stats, DFP, router."""
    names = [f.name for f in http_filters(SERVICES, "d", strip_peer_response=True,
                                          forward_proxy=True)]
    authz = ["envoy.filters.http.header_mutation", "envoy.filters.http.header_to_metadata",
             "envoy.filters.http.ext_authz"]
    assert names == ["envoy.filters.http.header_to_metadata", *authz,
                     "envoy.filters.http.ratelimit", "envoy.filters.http.grpc_stats",
                     "envoy.filters.http.dynamic_forward_proxy", "envoy.filters.http.router"]
    assert [f.name for f in http_filters(SERVICES, None)] == [
        *authz, "envoy.filters.http.grpc_stats", "envoy.filters.http.router"]


def test_authz_gets_the_direct_peer_raw_headers_and_tls_session() -> None:
    """The physical peer reaches ext_authz as unforgeable metadata; raw lines and SNI too."""
    header, stash, authz = authz_with_istio_inputs(SERVICES)
    mutation = HeaderMutation()
    assert header.typed_config.Unpack(mutation)
    (append,) = [m.append for m in mutation.mutations.request_mutations]
    assert append.header.key == "x-mixer-direct-remote-address"
    assert append.header.value == "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"
    # Overwrite: a client-sent header of that name must never survive.
    assert append.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    rules = HeaderToMetadata()
    assert stash.typed_config.Unpack(rules)
    (rule,) = rules.request_rules
    assert rule.header == "x-mixer-direct-remote-address" and rule.remove is True
    assert (rule.on_header_present.metadata_namespace, rule.on_header_present.key) == (
        server.METADATA_NAMESPACE, server.DIRECT_REMOTE_IP_KEY)
    config = ExtAuthz()
    assert authz.typed_config.Unpack(config)
    assert list(config.metadata_context_namespaces) == [server.METADATA_NAMESPACE]
    assert config.encode_raw_headers is True and config.include_tls_session is True
    assert config.failure_mode_allow is False


def test_access_log_streams_to_telemetry_with_peer_headers() -> None:
    """The gRPC access logger names the log, logs the peer headers and grpc_stats' state."""
    log = access_log(MixerServices(log_flush_interval="0.5s"), "sidecar-inbound")
    config = HttpGrpcAccessLogConfig()
    assert log.name == "envoy.access_loggers.http_grpc" and log.typed_config.Unpack(config)
    common = config.common_config
    assert common.log_name == "sidecar-inbound"
    assert common.transport_api_version == ApiVersion.V3
    assert common.grpc_service.envoy_grpc.cluster_name == "mixer_telemetry"
    assert common.buffer_flush_interval.nanos == 500_000_000
    assert common.buffer_size_bytes.value == 16384
    assert list(common.filter_state_objects_to_log) == ["envoy.filters.http.grpc_stats"]
    assert list(config.additional_request_headers_to_log) == [
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id", "content-type"]
    assert list(config.additional_response_headers_to_log) == [
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id", "grpc-status"]
    assert list(config.additional_response_trailers_to_log) == ["grpc-status"]
    (tag,) = common.custom_tags
    assert tag.tag == "istio.services" and tag.metadata.kind.HasField("cluster")
    assert tag.metadata.metadata_key.key == "istio"
    assert [p.key for p in tag.metadata.metadata_key.path] == ["services"]


def test_per_route_authz_carries_identity_or_disables() -> None:
    """context_extensions carry namespace, workload and labels; disabled turns the check off."""
    ext = authz_per_route(Workload("reviews", "shop", version="v2")).check_settings
    assert ext.context_extensions["namespace"] == "shop"
    assert ext.context_extensions["workload"] == "reviews"
    assert ext.context_extensions["label.version"] == "v2"
    assert authz_disabled().disabled is True


def test_peer_request_strip_removes_both_peer_headers() -> None:
    """The strip filter removes client-sent x-mixer-peer-metadata and -id from requests."""
    config = HeaderMutation()
    assert peer_request_strip_filter().typed_config.Unpack(config)
    assert [m.remove for m in config.mutations.request_mutations] == [
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"]
    assert http_filters(MixerServices(), None, strip_peer_request=True,
                        strip_peer_response=True)[0].name == "envoy.filters.http.header_mutation"


def test_client_side_loggers_tag_the_upstream_certificate_sans() -> None:
    """upstream_sans adds Envoy-formatted upstream peer/local URI SAN tags (HTTP and TCP)."""
    http = HttpGrpcAccessLogConfig()
    assert access_log(MixerServices(), "sidecar-outbound", upstream_sans=True).typed_config.Unpack(
        http)
    tags = {t.tag: t.value for t in http.common_config.custom_tags if t.value}
    assert tags == {"upstream_peer_uri_san": "%UPSTREAM_PEER_URI_SAN%",
                    "upstream_local_uri_san": "%UPSTREAM_LOCAL_URI_SAN%"}
    tcp = TcpGrpcAccessLogConfig()
    logger = tcp_access_log(MixerServices(), "sidecar-outbound-tcp", upstream_sans=True)
    assert logger.name == "envoy.access_loggers.tcp_grpc" and logger.typed_config.Unpack(tcp)
    assert tcp.common_config.log_name == "sidecar-outbound-tcp"
    assert {t.tag for t in tcp.common_config.custom_tags} == {
        "istio.services", "upstream_peer_uri_san", "upstream_local_uri_san"}
    plain = HttpGrpcAccessLogConfig()
    assert access_log(MixerServices(), "sidecar-inbound").typed_config.Unpack(plain)
    assert [t.tag for t in plain.common_config.custom_tags] == ["istio.services"]
