"""Envoy bootstraps for each role: sidecar, ingress gateway, egress gateway.

One function per role composes the pieces (clusters, filters, routes, listeners) into a typed
``Bootstrap``, so every role wires our services the same way. :func:`role_resources` gives the
same proxy as xDS resources (listeners, clusters), which is what an xDS server serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost

from controlplane.envoy.bootstrap import bootstrap, node
from controlplane.envoy.clusters import (
    FORWARD_PROXY_CLUSTER,
    cluster,
    forward_proxy_cluster,
    inbound_cluster,
    service_clusters,
)
from controlplane.envoy.filters import access_log, authz_disabled, authz_per_route, http_filters
from controlplane.envoy.listeners import (
    Tracing,
    http_connection_manager,
    listener,
    tracing_config,
)
from controlplane.envoy.model import Endpoint, MixerServices, ProxyOptions, Upstream, Workload
from controlplane.envoy.routes import (
    forward_route,
    health_route,
    not_found_route,
    peer_headers,
    route_configuration,
    virtual_host,
)

UNKNOWN_UPSTREAM_BODY = "mixer sidecar: no upstream for this Host\n"


@dataclass(frozen=True, slots=True)
class RoleResources:
    """What one proxy is given: listeners (with their routes inline) and clusters."""

    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]


def _tracing(workload: Workload, options: ProxyOptions) -> Tracing | None:
    """HCM tracing named after the workload, when the options ask for it."""
    if not options.tracing:
        return None
    return tracing_config(f"{workload.name}.{workload.namespace}")


def _http_listener(
    name: str, options: ProxyOptions, port: int, virtual_hosts: Sequence[VirtualHost],
    services: MixerServices, *, log_name: str, edge: bool = False,
    strip_peer_response: bool = False, forward_proxy: bool = False,
    tracing: Tracing | None = None,
) -> Listener:
    """A listener whose HCM (stat prefix and route table named ``name``) runs our filters."""
    hcm = http_connection_manager(
        stat_prefix=name, route_config=route_configuration(name, virtual_hosts),
        http_filters=http_filters(services, options.ratelimit_domain,
                                  strip_peer_response=strip_peer_response,
                                  forward_proxy=forward_proxy),
        access_logs=[access_log(services, log_name)], edge=edge, tracing=tracing,
    )
    return listener(name, options.listen_host, port, hcm)


def sidecar_resources(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    inbound_port: int, app: Endpoint, outbound_port: int | None = None,
    upstreams: Sequence[Upstream] = (), service_port: int = 8080,
) -> RoleResources:
    """A sidecar's listeners and clusters (see :func:`sidecar`)."""
    to_app = inbound_cluster(workload, service_port, app)
    tracing = _tracing(workload, options)
    inbound = virtual_host(
        "inbound", ["*"],
        [health_route(), forward_route("inbound", to_app.name, options.route_timeout)],
        authz=authz_per_route(workload), rate_limits=options.rate_limits,
        response_headers=peer_headers(workload, "sidecar"),
    )
    listeners = [_http_listener("inbound", options, inbound_port, [inbound], services,
                                log_name="sidecar-inbound", tracing=tracing)]
    clusters = [to_app]
    if outbound_port is not None:
        vhosts = [
            virtual_host(
                up.cluster_name, up.domains,
                [forward_route(up.service, up.cluster_name, options.route_timeout,
                               host_rewrite=up.fqdn)],
                authz=authz_disabled(), request_headers=peer_headers(workload, "sidecar"),
            )
            for up in upstreams
        ]
        vhosts.append(virtual_host("unknown-upstream", ["*"],
                                   [not_found_route("unknown", UNKNOWN_UPSTREAM_BODY)],
                                   authz=authz_disabled()))
        clusters += [cluster(up.cluster_name, [up.address]) for up in upstreams]
        listeners.append(_http_listener(
            "outbound", options, outbound_port, vhosts, services, log_name="sidecar-outbound",
            strip_peer_response=True, tracing=tracing))
    clusters += service_clusters(services, options.tracing)
    return RoleResources(tuple(listeners), tuple(clusters))


def sidecar(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    inbound_port: int, app: Endpoint, outbound_port: int | None = None,
    upstreams: Sequence[Upstream] = (), service_port: int = 8080,
) -> Bootstrap:
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
    resources = sidecar_resources(
        workload, services, options, inbound_port=inbound_port, app=app,
        outbound_port=outbound_port, upstreams=upstreams, service_port=service_port)
    return bootstrap(node(workload, "sidecar"), options.admin, resources.listeners,
                     resources.clusters)


def ingress_gateway_resources(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    port: int, upstream: Upstream,
) -> RoleResources:
    """The ingress gateway's listener and clusters (see :func:`ingress_gateway`)."""
    vhost = virtual_host(
        "ingress", ["*"],
        [health_route(), forward_route(upstream.service, upstream.cluster_name,
                                       options.route_timeout, host_rewrite=upstream.fqdn)],
        authz=authz_per_route(workload), rate_limits=options.rate_limits,
        request_headers=peer_headers(workload, "router"),
    )
    ingress = _http_listener("ingress", options, port, [vhost], services,
                             log_name="ingress-gateway", edge=True, strip_peer_response=True,
                             tracing=_tracing(workload, options))
    clusters = [cluster(upstream.cluster_name, [upstream.address]),
                *service_clusters(services, options.tracing)]
    return RoleResources((ingress,), tuple(clusters))


def ingress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    port: int, upstream: Upstream,
) -> Bootstrap:
    """The ingress gateway: the mesh's front door, routing everything to ``upstream``.

    It is the edge (``use_remote_address``), so ``remote_address`` rate limits see the real
    client. Host is rewritten to the upstream's FQDN, as a sidecar does. ext_authz runs with
    the gateway's identity (policies select it by label), the rate limits derived from the
    config apply to every proxied route.
    """
    resources = ingress_gateway_resources(workload, services, options, port=port,
                                          upstream=upstream)
    return bootstrap(node(workload, "router"), options.admin, resources.listeners,
                     resources.clusters)


def egress_gateway_resources(
    workload: Workload, services: MixerServices, options: ProxyOptions, *, port: int,
) -> RoleResources:
    """The egress gateway's listener and clusters (see :func:`egress_gateway`)."""
    vhost = virtual_host(
        "egress", ["*"],
        [health_route(), forward_route("external", FORWARD_PROXY_CLUSTER, options.route_timeout)],
        authz=authz_per_route(workload), rate_limits=options.rate_limits,
        request_headers=peer_headers(workload, "router"),
    )
    egress = _http_listener("egress", options, port, [vhost], services,
                            log_name="egress-gateway", forward_proxy=True,
                            tracing=_tracing(workload, options))
    clusters = [forward_proxy_cluster(), *service_clusters(services, options.tracing)]
    return RoleResources((egress,), tuple(clusters))


def egress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *, port: int,
) -> Bootstrap:
    """The egress gateway: an HTTP forward proxy to external hosts that a policy allows.

    Workloads send plain HTTP with the external ``Host``; the dynamic forward proxy resolves
    it. ext_authz runs on every request with the gateway's identity, so an ALLOW policy
    selecting the egress gateway (``to.operation.hosts``) decides which hosts are reachable;
    with the shipped example policy every other host gets 403. Fails closed like the others.
    """
    resources = egress_gateway_resources(workload, services, options, port=port)
    return bootstrap(node(workload, "router"), options.admin, resources.listeners,
                     resources.clusters)
