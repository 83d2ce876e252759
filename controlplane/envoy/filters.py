"""HTTP filters and the access logger that wire a listener to our three services.

- ext_authz: gRPC to ``mixer_authz``, ``failure_mode_allow: false`` (fail closed: an
  unreachable policy service denies), ``include_peer_certificate`` for mTLS identity; the
  workload identity travels in per-route ``context_extensions`` (:func:`authz_per_route`);
  :func:`authz_with_istio_inputs` adds what Istio's RBAC sees and a CheckRequest lacks.
- ratelimit: gRPC to ``mixer_ratelimit``, ``failure_mode_deny: false`` (fail open: an
  unreachable quota service lets traffic through, counted in ``ratelimit.failure_mode_allowed``)
  and ``x-ratelimit-*`` headers.
- access log: ``envoy.access_loggers.http_grpc`` to ``mixer_telemetry`` with the peer-metadata
  headers, ``content-type`` and ``grpc-status`` that Istio's metrics need.
- header_to_metadata: gateways and outbound sidecars move the peer response headers into
  dynamic metadata (:func:`peer_stash_filter`).
- header_mutation: peer-metadata request headers are trusted only from a peer with a verified
  mesh certificate, so gateways and plaintext inbound chains remove them first
  (:func:`peer_request_strip_filter`).
"""

from __future__ import annotations

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import (
    CommonGrpcAccessLogConfig,
    HttpGrpcAccessLogConfig,
    TcpGrpcAccessLogConfig,
)
from envoy.extensions.filters.http.dynamic_forward_proxy.v3.dynamic_forward_proxy_pb2 import (
    FilterConfig as ForwardProxyConfig,
)
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthz, ExtAuthzPerRoute
from envoy.extensions.filters.http.grpc_stats.v3.config_pb2 import FilterConfig as GrpcStatsConfig
from envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2 import HeaderMutation
from envoy.extensions.filters.http.header_to_metadata.v3.header_to_metadata_pb2 import (
    Config as HeaderToMetadata,
)
from envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2 import RateLimit
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from envoy.type.tracing.v3.custom_tag_pb2 import CustomTag
from envoy.type.v3.http_status_pb2 import StatusCode
from google.protobuf.message import Message

from controlplane.envoy.clusters import egress_dns_cache
from controlplane.envoy.core import duration, envoy_grpc, pack
from controlplane.envoy.model import (
    AUTHZ_CLUSTER,
    AUTHZ_METADATA_NAMESPACE,
    DIRECT_PEER_HEADER,
    DIRECT_REMOTE_IP_KEY,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    PEER_STASH_NAMESPACE,
    RATELIMIT_CLUSTER,
    TELEMETRY_CLUSTER,
    MixerServices,
    Workload,
)

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RATELIMIT = "envoy.filters.http.ratelimit"
GRPC_STATS = "envoy.filters.http.grpc_stats"
HEADER_TO_METADATA = "envoy.filters.http.header_to_metadata"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
FORWARD_PROXY = "envoy.filters.http.dynamic_forward_proxy"
ROUTER = "envoy.filters.http.router"
GRPC_ACCESS_LOG = "envoy.access_loggers.http_grpc"
TCP_GRPC_ACCESS_LOG = "envoy.access_loggers.tcp_grpc"
#: The access-log buffer: about 49 entries, flushed earlier by ``log_flush_interval``.
_LOG_BUFFER_BYTES = 16384


def http_filter(name: str, config: Message) -> HttpFilter:
    """An HTTP filter with its typed config."""
    return HttpFilter(name=name, typed_config=pack(config))


def ext_authz_config(services: MixerServices) -> ExtAuthz:
    """ext_authz calling our policy service over gRPC; fails closed."""
    return ExtAuthz(
        transport_api_version=ApiVersion.V3,
        grpc_service=envoy_grpc(AUTHZ_CLUSTER, services.authz_timeout),
        # Fail closed: if the policy service is down or slow, deny (403).
        failure_mode_allow=False,
        include_peer_certificate=True,
        status_on_error={"code": StatusCode.Forbidden},
    )


def ext_authz_filter(services: MixerServices) -> HttpFilter:
    """The ext_authz HTTP filter calling our policy service; fails closed."""
    return http_filter(EXT_AUTHZ, ext_authz_config(services))


def authz_with_istio_inputs(services: MixerServices) -> list[HttpFilter]:
    """ext_authz preceded by what Istio's RBAC sees and a CheckRequest lacks (authz issue 8 §1).

    - the physical peer (RBAC ``direct_remote_ip``: ``source.ip``/``ipBlocks``), which the
      PROXY protocol hides from ``source.address``: written over any client value into a
      transient header, moved into dynamic metadata (``envoy_mixer.direct_remote_ip``, which a
      client cannot forge) and removed, then sent via ``metadata_context_namespaces``;
    - ``encode_raw_headers``: repeated header lines arrive apart (RBAC matches each line);
    - ``include_tls_session``: the SNI (``connection.sni``).
    """
    config = ext_authz_config(services)
    config.metadata_context_namespaces.append(AUTHZ_METADATA_NAMESPACE)
    config.encode_raw_headers = True
    config.include_tls_session = True
    return [direct_peer_header_filter(), direct_peer_stash_filter(),
            http_filter(EXT_AUTHZ, config)]


def direct_peer_header_filter() -> HttpFilter:
    """Write the physical peer's IP into the transient header, over any value a client sent."""
    config = HeaderMutation()
    config.mutations.request_mutations.add().append.CopyFrom(HeaderValueOption(
        header={"key": DIRECT_PEER_HEADER,
                "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"},
        append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    ))
    return http_filter(HEADER_MUTATION, config)


def direct_peer_stash_filter() -> HttpFilter:
    """Move the transient peer header into ext_authz's metadata namespace, off the request."""
    config = HeaderToMetadata()
    rule = config.request_rules.add(header=DIRECT_PEER_HEADER, remove=True)
    rule.on_header_present.metadata_namespace = AUTHZ_METADATA_NAMESPACE
    rule.on_header_present.key = DIRECT_REMOTE_IP_KEY
    rule.on_header_present.type = HeaderToMetadata.STRING
    return http_filter(HEADER_TO_METADATA, config)


def ratelimit_filter(services: MixerServices, domain: str) -> HttpFilter:
    """The global ratelimit HTTP filter calling our quota service; fails open."""
    config = RateLimit(
        domain=domain,
        stage=0,
        request_type="external",
        timeout=duration(services.ratelimit_timeout),
        # Fail open: a quota outage must not take the mesh down; Envoy counts these in
        # cluster.<upstream>.ratelimit.failure_mode_allowed.
        failure_mode_deny=False,
        enable_x_ratelimit_headers=RateLimit.DRAFT_VERSION_03,
    )
    config.rate_limit_service.transport_api_version = ApiVersion.V3
    config.rate_limit_service.grpc_service.CopyFrom(
        envoy_grpc(RATELIMIT_CLUSTER, services.ratelimit_timeout))
    return http_filter(RATELIMIT, config)


def grpc_stats_filter() -> HttpFilter:
    """gRPC message counting; its filter state feeds istio_request/response_messages_total."""
    config = GrpcStatsConfig(emit_filter_state=True)
    # The counts travel to the telemetry service as filter state in each log entry; per-method
    # stats would only add unbounded Envoy stat names.
    config.stats_for_all_methods.value = False
    return http_filter(GRPC_STATS, config)


def peer_stash_filter() -> HttpFilter:
    """Move the peer-metadata response headers into dynamic metadata, off the response.

    Istio's metadata exchange never shows workload identities to clients; neither do we. The
    access log still gets them: Envoy copies dynamic metadata into every ALS entry, and the
    telemetry service reads them from there.
    """
    config = HeaderToMetadata()
    for name in (PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER):
        rule = config.response_rules.add(header=name, remove=True)
        rule.on_header_present.metadata_namespace = PEER_STASH_NAMESPACE
        rule.on_header_present.key = name
        rule.on_header_present.type = HeaderToMetadata.STRING
    return http_filter(HEADER_TO_METADATA, config)


def peer_request_strip_filter() -> HttpFilter:
    """Remove peer-metadata request headers a client sent (nobody verified who sent them)."""
    config = HeaderMutation()
    for name in (PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER):
        config.mutations.request_mutations.add().remove = name
    return http_filter(HEADER_MUTATION, config)


def forward_proxy_filter() -> HttpFilter:
    """The egress gateway's dynamic forward proxy (resolves ``Host`` through the DNS cache)."""
    return http_filter(FORWARD_PROXY, ForwardProxyConfig(dns_cache_config=egress_dns_cache()))


def router_filter() -> HttpFilter:
    """The terminal router filter."""
    return http_filter(ROUTER, Router())


def http_filters(
    services: MixerServices, domain: str | None, *, strip_peer_response: bool = False,
    strip_peer_request: bool = False, forward_proxy: bool = False,
) -> list[HttpFilter]:
    """The filter chain every role uses, in Envoy's order of execution.

    ``domain`` None leaves out the ratelimit filter; ``strip_peer_request`` first removes
    client-sent peer-metadata headers (gateways, plaintext inbound); ``strip_peer_response``
    puts the peer-metadata stash first (client-facing listeners); ``forward_proxy`` adds the
    dynamic forward proxy just before the router (egress gateway).
    """
    chain = [peer_request_strip_filter()] if strip_peer_request else []
    if strip_peer_response:
        chain.append(peer_stash_filter())
    chain += authz_with_istio_inputs(services)
    if domain is not None:
        chain.append(ratelimit_filter(services, domain))
    chain.append(grpc_stats_filter())
    if forward_proxy:
        chain.append(forward_proxy_filter())
    chain.append(router_filter())
    return chain


#: Custom tags carrying the upstream connection's URI SANs: ALS logs only the downstream TLS,
#: and the client-side reporter needs the destination's (and its own) certificate identity.
UPSTREAM_SAN_TAGS = (("upstream_peer_uri_san", "%UPSTREAM_PEER_URI_SAN%"),
                     ("upstream_local_uri_san", "%UPSTREAM_LOCAL_URI_SAN%"))


def upstream_san_tags() -> list[CustomTag]:
    """The upstream SAN tags, formatted by Envoy from the upstream TLS connection."""
    return [CustomTag(tag=tag, value=value) for tag, value in UPSTREAM_SAN_TAGS]


def access_log(services: MixerServices, log_name: str, *, upstream_sans: bool = False,
               ) -> AccessLog:
    """The gRPC access logger streaming entries to our telemetry service.

    ``upstream_sans`` (client-side loggers) adds the upstream certificate SANs as tags.
    """
    config = HttpGrpcAccessLogConfig(
        additional_request_headers_to_log=[
            PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER, "content-type"],
        additional_response_headers_to_log=[
            PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER, "grpc-status"],
        additional_response_trailers_to_log=["grpc-status"],
    )
    _common_log_config(config.common_config, services, log_name, upstream_sans)
    # gRPC message counts (from grpc_stats) for the Istio messages metrics.
    config.common_config.filter_state_objects_to_log.append(GRPC_STATS)
    return AccessLog(name=GRPC_ACCESS_LOG, typed_config=pack(config))


def tcp_access_log(services: MixerServices, log_name: str, *, upstream_sans: bool = False,
                   ) -> AccessLog:
    """The gRPC TCP access logger (one entry per connection) streaming to telemetry."""
    config = TcpGrpcAccessLogConfig()
    _common_log_config(config.common_config, services, log_name, upstream_sans)
    return AccessLog(name=TCP_GRPC_ACCESS_LOG, typed_config=pack(config))


def _common_log_config(common: CommonGrpcAccessLogConfig, services: MixerServices,
                       log_name: str, upstream_sans: bool) -> None:
    common.log_name = log_name
    common.transport_api_version = ApiVersion.V3
    common.grpc_service.CopyFrom(envoy_grpc(TELEMETRY_CLUSTER))
    common.buffer_flush_interval.CopyFrom(duration(services.log_flush_interval))
    common.buffer_size_bytes.value = _LOG_BUFFER_BYTES
    common.custom_tags.append(istio_services_tag())
    if upstream_sans:
        common.custom_tags.extend(upstream_san_tags())


def istio_services_tag() -> CustomTag:
    """The upstream cluster's ``istio.services`` metadata as a log tag (Envoy logs it as JSON).

    It names ``destination_service`` on the server side, as Istio takes it.
    """
    tag = CustomTag(tag="istio.services")
    tag.metadata.kind.cluster.SetInParent()
    tag.metadata.metadata_key.key = "istio"
    tag.metadata.metadata_key.path.add(key="services")
    return tag


def authz_per_route(workload: Workload) -> ExtAuthzPerRoute:
    """Per-route ext_authz settings carrying the workload identity to the policy service."""
    out = ExtAuthzPerRoute()
    out.check_settings.context_extensions.update(workload.context_extensions())
    return out


def authz_disabled() -> ExtAuthzPerRoute:
    """Per-route ext_authz off (health checks must not depend on the policy service)."""
    return ExtAuthzPerRoute(disabled=True)
