"""Envoy bootstraps for each role: sidecar, ingress gateway, egress gateway.

One function per role returns a plain dict (the YAML bootstrap). Shared pieces (the three
service clusters, the HTTP filters, the access logger, path normalization) are built once here
so every role wires our services the same way:

- ext_authz: gRPC to ``mixer_authz``, ``failure_mode_allow: false`` (fail closed: an
  unreachable policy service denies), ``include_peer_certificate`` for mTLS identity, workload
  identity in per-route ``context_extensions``, disabled on health-check routes.
- ratelimit: gRPC to ``mixer_ratelimit``, ``failure_mode_deny: false`` (fail open: an
  unreachable quota service lets traffic through, counted in ``ratelimit.failure_mode_allowed``),
  ``x-ratelimit-*`` headers, actions derived from the ratelimit config.
- access log: ``envoy.access_loggers.http_grpc`` to ``mixer_telemetry`` with the peer-metadata
  headers, ``content-type`` and ``grpc-status`` that Istio's metrics need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from envoy_mixer.envoyconfig.model import (
    AUTHZ_CLUSTER,
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    PEER_STASH_NAMESPACE,
    RATELIMIT_CLUSTER,
    TELEMETRY_CLUSTER,
    TRACING_CLUSTER,
    Endpoint,
    MixerServices,
    ProxyOptions,
    Upstream,
    Workload,
)
from envoy_mixer.envoyconfig.ratelimit_actions import rate_limits_block

Json = dict[str, object]

_T = "type.googleapis.com/"
HEALTH_PATH = "/healthz/ready"


# ---------------------------------------------------------------------------- clusters

def cluster(name: str, endpoints: Sequence[Endpoint], *, http2: bool = False,
            connect_timeout: str = "1s") -> Json:
    """A cluster; STATIC for IPs, STRICT_DNS for names; HTTP/2 for gRPC services."""
    out: Json = {
        "name": name,
        "type": "STATIC" if all(e.is_ip for e in endpoints) else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
    }
    if out["type"] == "STRICT_DNS":
        out["dns_lookup_family"] = "V4_ONLY"
    if http2:
        # gRPC needs HTTP/2; without this every call-out fails (and ext_authz then denies all).
        out["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    out["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _socket(e.host, e.port)}} for e in endpoints
        ]}],
    }
    return out


def service_clusters(services: MixerServices, tracing: Endpoint | None = None) -> list[Json]:
    """The HTTP/2 clusters of our three services (and the tracing collector)."""
    out = [
        cluster(AUTHZ_CLUSTER, [services.authz], http2=True, connect_timeout="0.25s"),
        cluster(RATELIMIT_CLUSTER, [services.ratelimit], http2=True, connect_timeout="0.25s"),
        cluster(TELEMETRY_CLUSTER, [services.telemetry], http2=True, connect_timeout="0.25s"),
    ]
    if tracing is not None:
        out.append(cluster(TRACING_CLUSTER, [tracing], http2=True, connect_timeout="0.25s"))
    return out


# ---------------------------------------------------------------------------- filters

def ext_authz_filter(services: MixerServices) -> Json:
    """The ext_authz HTTP filter calling our policy service; fails closed."""
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": AUTHZ_CLUSTER},
                "timeout": services.authz_timeout,
            },
            # Fail closed: if the policy service is down or slow, deny (403).
            "failure_mode_allow": False,
            "include_peer_certificate": True,
            "status_on_error": {"code": "Forbidden"},
        },
    }


def authz_with_istio_inputs(authz: Json) -> list[Json]:
    """``authz`` preceded by what Istio's RBAC sees and a CheckRequest lacks (authz issue 8 §1).

    - the physical peer (RBAC ``direct_remote_ip``: ``source.ip``/``ipBlocks``), which the
      PROXY protocol hides from ``source.address``: written over any client value into a
      transient header, moved into dynamic metadata (``envoy_mixer.direct_remote_ip``, which a
      client cannot forge) and removed, then sent via ``metadata_context_namespaces``;
    - ``encode_raw_headers``: repeated header lines arrive apart (RBAC matches each line);
    - ``include_tls_session``: the SNI (``connection.sni``).
    """
    transient = "x-mixer-direct-remote-address"
    typed = dict(cast(Json, authz["typed_config"]))
    typed.update(metadata_context_namespaces=["envoy_mixer"], encode_raw_headers=True,
                 include_tls_session=True)
    authz = {**authz, "typed_config": typed}
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": _T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"request_mutations": [{"append": {
                    "header": {"key": transient,
                               "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }}]},
            },
        },
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": _T + "envoy.extensions.filters.http.header_to_metadata.v3.Config",
                "request_rules": [{
                    "header": transient,
                    "on_header_present": {"metadata_namespace": "envoy_mixer",
                                          "key": "direct_remote_ip", "type": "STRING"},
                    "remove": True,
                }],
            },
        },
        authz,
    ]


def ratelimit_filter(services: MixerServices, domain: str) -> Json:
    """The global ratelimit HTTP filter calling our quota service; fails open."""
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "stage": 0,
            "request_type": "external",
            "timeout": services.ratelimit_timeout,
            # Fail open: a quota outage must not take the mesh down; Envoy counts these in
            # cluster.<upstream>.ratelimit.failure_mode_allowed.
            "failure_mode_deny": False,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER},
                    "timeout": services.ratelimit_timeout,
                },
            },
        },
    }


def grpc_stats_filter() -> Json:
    """gRPC message counting; its filter state feeds istio_request/response_messages_total."""
    return {
        "name": "envoy.filters.http.grpc_stats",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            # The counts travel to the telemetry service as filter state in each log entry.
            "emit_filter_state": True,
            "stats_for_all_methods": False,
        },
    }


def peer_stash_filter() -> Json:
    """Move the peer-metadata response headers into dynamic metadata, off the response.

    Istio's metadata exchange never shows workload identities to clients; neither do we. The
    access log still gets them: Envoy copies dynamic metadata into every ALS entry, and the
    telemetry service reads them from there.
    """
    rules = [
        {"header": name,
         "on_header_present": {"metadata_namespace": PEER_STASH_NAMESPACE, "key": name,
                               "type": "STRING"},
         "remove": True}
        for name in (PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER)
    ]
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "response_rules": rules,
        },
    }


def router_filter() -> Json:
    """The terminal router filter."""
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
    }


def access_log(services: MixerServices, log_name: str) -> Json:
    """The gRPC access logger streaming entries to our telemetry service."""
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": _T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": TELEMETRY_CLUSTER}},
                "buffer_flush_interval": services.log_flush_interval,
                "buffer_size_bytes": 16384,
                # gRPC message counts (from grpc_stats) for the Istio messages metrics.
                "filter_state_objects_to_log": ["envoy.filters.http.grpc_stats"],
                # The upstream cluster's istio.services metadata (Envoy logs it as JSON):
                # destination_service on the server side, as Istio takes it.
                "custom_tags": [{"tag": "istio.services", "metadata": {
                    "kind": {"cluster": {}},
                    "metadata_key": {"key": "istio", "path": [{"key": "services"}]},
                }}],
            },
            "additional_request_headers_to_log": [
                PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER, "content-type",
            ],
            "additional_response_headers_to_log": [
                PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER, "grpc-status",
            ],
            "additional_response_trailers_to_log": ["grpc-status"],
        },
    }


def authz_per_route(workload: Workload) -> Json:
    """Per-route ext_authz settings carrying the workload identity to the policy service."""
    return {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"context_extensions": workload.context_extensions()},
    }


def authz_disabled() -> Json:
    """Per-route ext_authz off (health checks must not depend on the policy service)."""
    return {
        "@type": _T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "disabled": True,
    }


def peer_headers(workload: Workload, proxy_type: str) -> list[Json]:
    """Header values announcing ``workload``'s identity to the peer (metadata exchange)."""
    return [
        {"header": {"key": PEER_METADATA_HEADER, "value": workload.peer_metadata_header()},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": PEER_METADATA_ID_HEADER, "value": workload.node_id(proxy_type)},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
    ]


def health_route() -> Json:
    """``/healthz/ready`` answered by Envoy itself, with ext_authz disabled."""
    return {
        "name": "health",
        "match": {"path": HEALTH_PATH},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_disabled()},
    }


def http_connection_manager(
    *, stat_prefix: str, virtual_hosts: list[Json], http_filters: list[Json],
    access_logs: list[Json], edge: bool, tracing: Json | None = None,
) -> Json:
    """An HTTP connection manager with path normalization and explicit timeouts."""
    hcm: Json = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3."
                      "HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        # Normalize before any policy sees the path: /a/../admin, //admin and %2F tricks
        # must not slip past path rules.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "use_remote_address": edge,
        "request_timeout": "30s",
        "stream_idle_timeout": "60s",
        "common_http_protocol_options": {"idle_timeout": "300s"},
        "route_config": {"name": stat_prefix, "virtual_hosts": virtual_hosts},
        "http_filters": http_filters,
        "access_log": access_logs,
    }
    if tracing is not None:
        hcm["tracing"] = tracing
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}


def tracing_config(service_name: str) -> Json:
    """HCM tracing via OpenTelemetry (OTLP/gRPC) to the tracing collector, every request."""
    return {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": TRACING_CLUSTER},
                                 "timeout": "0.25s"},
                "service_name": service_name,
            },
        },
    }


def listener(name: str, host: str, port: int, hcm: Json) -> Json:
    """A TCP listener with one HTTP connection manager."""
    return {
        "name": name,
        "address": _socket(host, port),
        "filter_chains": [{"filters": [hcm]}],
    }


def bootstrap(node: Json, admin: Endpoint, listeners: list[Json], clusters: list[Json]) -> Json:
    """The whole bootstrap: node identity, admin, static listeners and clusters."""
    return {
        "node": node,
        "admin": {"address": _socket(admin.host, admin.port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _tracing(workload: Workload, options: ProxyOptions) -> Json | None:
    """HCM tracing named after the workload, when the options ask for it."""
    if not options.tracing:
        return None
    return tracing_config(f"{workload.name}.{workload.namespace}")


def _socket(host: str, port: int) -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def _filters(
    services: MixerServices, domain: str | None, *, strip_peer_response: bool = False
) -> list[Json]:
    filters = [peer_stash_filter()] if strip_peer_response else []
    filters.extend(authz_with_istio_inputs(ext_authz_filter(services)))
    if domain is not None:
        filters.append(ratelimit_filter(services, domain))
    filters.append(grpc_stats_filter())
    filters.append(router_filter())
    return filters


def _rate_limited(vhost: Json, options: ProxyOptions) -> Json:
    if options.rate_limits:
        vhost["rate_limits"] = rate_limits_block(options.rate_limits)
    return vhost


# ---------------------------------------------------------------------------- roles

def sidecar(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    inbound_port: int, app: Endpoint, outbound_port: int | None = None,
    upstreams: Sequence[Upstream] = (), service_port: int = 8080,
) -> Json:
    """A sidecar: inbound (policy, quota, telemetry in front of the app) and outbound.

    Inbound: ext_authz with the workload's identity, the ratelimit filter, access log with
    log name ``sidecar-inbound``; the response carries this workload's peer metadata.
    Outbound (only with ``outbound_port``): routes by Host to each upstream on its
    ``outbound|<port>||<fqdn>`` cluster, rewrites Host to the FQDN (so the server-side
    reporter names the same ``destination_service``), adds this workload's peer metadata to
    requests, logs as ``sidecar-outbound``. Authorization is enforced server-side (inbound),
    as in Istio, so the outbound listener disables ext_authz; outbound quotas use the same
    ratelimit filter.
    """
    inbound_cluster = f"inbound|{service_port}||"
    tracing = _tracing(workload, options)
    inbound_vhost: Json = {
        "name": "inbound",
        "domains": ["*"],
        "routes": [
            health_route(),
            {"name": "inbound", "match": {"prefix": "/"},
             "route": {"cluster": inbound_cluster, "timeout": options.route_timeout}},
        ],
        "response_headers_to_add": peer_headers(workload, "sidecar"),
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_per_route(workload)},
    }
    listeners = [listener(
        "inbound", options.listen_host, inbound_port,
        http_connection_manager(
            stat_prefix="inbound", virtual_hosts=[_rate_limited(inbound_vhost, options)],
            http_filters=_filters(services, options.ratelimit_domain),
            access_logs=[access_log(services, "sidecar-inbound")], edge=False, tracing=tracing,
        ),
    )]
    clusters = [cluster(inbound_cluster, [app])]
    # Istio's inbound-cluster metadata: the service this workload serves on the port.
    fqdn = f"{workload.name}.{workload.namespace}.svc.cluster.local"
    clusters[0]["metadata"] = {"filter_metadata": {"istio": {"services": [
        {"host": fqdn, "name": workload.name, "namespace": workload.namespace}]}}}
    if outbound_port is not None:
        vhosts: list[Json] = []
        for up in upstreams:
            vhosts.append({
                "name": up.cluster_name,
                "domains": up.domains,
                "routes": [{"name": up.service, "match": {"prefix": "/"},
                            "route": {"cluster": up.cluster_name,
                                      "host_rewrite_literal": up.fqdn,
                                      "timeout": options.route_timeout}}],
                "request_headers_to_add": peer_headers(workload, "sidecar"),
                "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_disabled()},
            })
            clusters.append(cluster(up.cluster_name, [up.address]))
        vhosts.append({
            "name": "unknown-upstream",
            "domains": ["*"],
            "routes": [{"name": "unknown", "match": {"prefix": "/"}, "direct_response": {
                "status": 404,
                "body": {"inline_string": "mixer sidecar: no upstream for this Host\n"}}}],
            "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_disabled()},
        })
        listeners.append(listener(
            "outbound", options.listen_host, outbound_port,
            http_connection_manager(
                stat_prefix="outbound", virtual_hosts=vhosts,
                http_filters=_filters(services, options.ratelimit_domain,
                                      strip_peer_response=True),
                access_logs=[access_log(services, "sidecar-outbound")], edge=False,
                tracing=tracing,
            ),
        ))
    clusters += service_clusters(services, options.tracing)
    return bootstrap(workload.node("sidecar"), options.admin, listeners, clusters)


def ingress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    port: int, upstream: Upstream,
) -> Json:
    """The ingress gateway: the mesh's front door, routing everything to ``upstream``.

    It is the edge (``use_remote_address``), so ``remote_address`` rate limits see the real
    client. Host is rewritten to the upstream's FQDN, as a sidecar does. ext_authz runs with
    the gateway's identity (policies select it by label),
    the rate limits derived from the config apply to every proxied route.
    """
    tracing = _tracing(workload, options)
    vhost: Json = {
        "name": "ingress",
        "domains": ["*"],
        "routes": [
            health_route(),
            {"name": upstream.service, "match": {"prefix": "/"},
             "route": {"cluster": upstream.cluster_name, "host_rewrite_literal": upstream.fqdn,
                       "timeout": options.route_timeout}},
        ],
        "request_headers_to_add": peer_headers(workload, "router"),
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_per_route(workload)},
    }
    hcm = http_connection_manager(
        stat_prefix="ingress", virtual_hosts=[_rate_limited(vhost, options)],
        http_filters=_filters(services, options.ratelimit_domain, strip_peer_response=True),
        access_logs=[access_log(services, "ingress-gateway")], edge=True, tracing=tracing,
    )
    clusters = [cluster(upstream.cluster_name, [upstream.address]), *service_clusters(
        services, options.tracing)]
    return bootstrap(workload.node("router"), options.admin,
                     [listener("ingress", options.listen_host, port, hcm)], clusters)


def egress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *, port: int,
) -> Json:
    """The egress gateway: an HTTP forward proxy to external hosts that a policy allows.

    Workloads send plain HTTP with the external ``Host``; the dynamic forward proxy resolves
    it. ext_authz runs on every request with the gateway's identity, so an ALLOW policy
    selecting the egress gateway (``to.operation.hosts``) decides which hosts are reachable;
    with the shipped example policy every other host gets 403. Fails closed like the others.
    """
    tracing = _tracing(workload, options)
    dns_cache = {
        "name": "egress_dns_cache",
        "dns_lookup_family": "V4_ONLY",
        "host_ttl": "300s",
        "max_hosts": 1024,
    }
    vhost: Json = {
        "name": "egress",
        "domains": ["*"],
        "routes": [
            health_route(),
            {"name": "external", "match": {"prefix": "/"},
             "route": {"cluster": "egress_dynamic_forward_proxy",
                       "timeout": options.route_timeout}},
        ],
        "request_headers_to_add": peer_headers(workload, "router"),
        "typed_per_filter_config": {"envoy.filters.http.ext_authz": authz_per_route(workload)},
    }
    filters = _filters(services, options.ratelimit_domain)
    filters.insert(len(filters) - 1, {
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dns_cache,
        },
    })
    hcm = http_connection_manager(
        stat_prefix="egress", virtual_hosts=[_rate_limited(vhost, options)],
        http_filters=filters, access_logs=[access_log(services, "egress-gateway")],
        edge=False, tracing=tracing,
    )
    forward: Json = {
        "name": "egress_dynamic_forward_proxy",
        "connect_timeout": "2s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {
            "name": "envoy.clusters.dynamic_forward_proxy",
            "typed_config": {
                "@type": _T + "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                "dns_cache_config": dns_cache,
            },
        },
    }
    return bootstrap(workload.node("router"), options.admin,
                     [listener("egress", options.listen_host, port, hcm)],
                     [forward, *service_clusters(services, options.tracing)])
