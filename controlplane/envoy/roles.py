"""Envoy bootstraps for each role: sidecar, ingress gateway, egress gateway.

One function per role composes the pieces (clusters, filters, routes, listeners) into a typed
``Bootstrap``, so every role wires our services the same way. The ``*_resources`` functions give
the same proxy as xDS resources (listeners, clusters), which is what an xDS server serves.

With ``ProxyOptions.tls`` (a mesh certificate) the proxies speak Istio's mTLS: a sidecar's
inbound listeners admit peers as their PeerAuthentication mode says (:mod:`.listeners`), and
every cluster to a mesh upstream originates ISTIO_MUTUAL (:mod:`.tls`). The egress gateway
takes mesh workloads on its listener as a sidecar's inbound does, and a sidecar's routes to it
(``EgressRoute``) are ISTIO_MUTUAL to the gateway's identity. Peer-metadata request headers
count only from a verified peer: plaintext inbound chains and the gateways remove them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from controlplane.envoy.bootstrap import bootstrap, node
from controlplane.envoy.clusters import (
    FORWARD_PROXY_CLUSTER,
    cluster,
    forward_proxy_cluster,
    inbound_cluster,
    service_clusters,
)
from controlplane.envoy.filters import (
    access_log,
    authz_disabled,
    authz_per_route,
    http_filters,
    tcp_access_log,
)
from controlplane.envoy.listeners import (
    Tracing,
    http_connection_manager,
    inbound_listener,
    listener,
    tracing_config,
)
from controlplane.envoy.model import (
    EgressRoute,
    Endpoint,
    InboundMode,
    MixerServices,
    ProxyOptions,
    TcpInbound,
    TcpOutbound,
    Upstream,
    Workload,
)
from controlplane.envoy.routes import (
    forward_route,
    health_route,
    not_found_route,
    peer_headers,
    route_configuration,
    virtual_host,
)
from controlplane.envoy.tls import downstream_tls, upstream_tls

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


def _hcm(
    name: str, options: ProxyOptions, virtual_hosts: Sequence[VirtualHost],
    services: MixerServices, *, log_name: str, edge: bool = False,
    strip_peer_request: bool = False, strip_peer_response: bool = False,
    forward_proxy: bool = False, upstream_sans: bool = False, client_cert: bool = False,
    tracing: Tracing | None = None,
) -> HttpConnectionManager:
    """An HCM (stat prefix and route table named ``name``) running our filters."""
    return http_connection_manager(
        stat_prefix=name, route_config=route_configuration(name, virtual_hosts),
        http_filters=http_filters(services, options.ratelimit_domain,
                                  strip_peer_request=strip_peer_request,
                                  strip_peer_response=strip_peer_response,
                                  forward_proxy=forward_proxy),
        access_logs=[access_log(services, log_name, upstream_sans=upstream_sans)],
        edge=edge, tracing=tracing, client_cert=client_cert,
    )


def inbound_mode(options: ProxyOptions) -> InboundMode:
    """The mode of this proxy's inbound ports: its PeerAuthentication's, DISABLE without a cert."""
    return options.tls.mode if options.tls is not None else "DISABLE"


def _mesh_cluster(options: ProxyOptions, upstream: Upstream) -> Cluster:
    """The ``outbound|...`` cluster to a mesh upstream, ISTIO_MUTUAL when we hold a cert."""
    out = cluster(upstream.cluster_name, [upstream.address])
    if options.tls is not None and upstream.mtls:
        out.transport_socket.CopyFrom(upstream_tls(options.tls, upstream))
    return out


def _tcp_proxy(name: str, cluster_name: str, services: MixerServices, log_name: str, *,
               upstream_sans: bool) -> TcpProxy:
    return TcpProxy(stat_prefix=name, cluster=cluster_name, access_log=[
        tcp_access_log(services, log_name, upstream_sans=upstream_sans)])


def sidecar_resources(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    inbound_port: int, app: Endpoint, outbound_port: int | None = None,
    upstreams: Sequence[Upstream] = (), service_port: int = 8080,
    tcp_inbound: Sequence[TcpInbound] = (), tcp_outbound: Sequence[TcpOutbound] = (),
    egress: EgressRoute | None = None,
) -> RoleResources:
    """A sidecar's listeners and clusters (see :func:`sidecar`)."""
    if egress is not None and outbound_port is None:
        raise ValueError("an egress route needs the outbound listener (outbound_port)")
    to_app = inbound_cluster(workload, service_port, app)
    tracing = _tracing(workload, options)
    inbound = virtual_host(
        "inbound", ["*"],
        [health_route(), forward_route("inbound", to_app.name, options.route_timeout)],
        authz=authz_per_route(workload), rate_limits=options.rate_limits,
        response_headers=peer_headers(workload, "sidecar"),
    )
    mode = inbound_mode(options)
    server_tls = downstream_tls(options.tls) if options.tls is not None else None

    def inbound_hcm(secured: bool) -> HttpConnectionManager:
        return _hcm("inbound", options, [inbound], services, log_name="sidecar-inbound",
                    strip_peer_request=not secured, client_cert=secured, tracing=tracing)

    # PERMISSIVE: TLS the sidecar cannot terminate (the app's own) goes to the app as TCP.
    passthrough = _tcp_proxy("inbound_passthrough", to_app.name, services,
                             "sidecar-inbound-tcp", upstream_sans=False)
    listeners = [inbound_listener("inbound", options.listen_host, inbound_port, mode,
                                  mtls=inbound_hcm(True), plaintext=inbound_hcm(False),
                                  server_tls=server_tls, passthrough=passthrough)]
    clusters = [to_app]
    for tcp in tcp_inbound:
        app_cluster = inbound_cluster(workload, tcp.service_port, tcp.app)
        name = f"inbound_tcp_{tcp.service_port}"
        proxy = _tcp_proxy(name, app_cluster.name, services, "sidecar-inbound-tcp",
                           upstream_sans=False)
        listeners.append(inbound_listener(name, options.listen_host, tcp.listen, mode,
                                          mtls=proxy, plaintext=proxy, server_tls=server_tls,
                                          passthrough=proxy))
        clusters.append(app_cluster)
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
        if egress is not None:
            # The external Host stays: the egress gateway forwards by it (and its policy
            # matches it).
            vhosts.append(virtual_host(
                "egress-gateway", egress.hosts,
                [forward_route("external", egress.gateway.cluster_name, options.route_timeout)],
                authz=authz_disabled(), request_headers=peer_headers(workload, "sidecar")))
        vhosts.append(virtual_host("unknown-upstream", ["*"],
                                   [not_found_route("unknown", UNKNOWN_UPSTREAM_BODY)],
                                   authz=authz_disabled()))
        clusters += [_mesh_cluster(options, up) for up in upstreams]
        if egress is not None:
            clusters.append(_mesh_cluster(options, egress.gateway))
        listeners.append(listener("outbound", options.listen_host, outbound_port, _hcm(
            "outbound", options, vhosts, services, log_name="sidecar-outbound",
            strip_peer_response=True, upstream_sans=True, tracing=tracing)))
    for tcp_out in tcp_outbound:
        up = tcp_out.upstream
        name = f"outbound_tcp_{tcp_out.listen}"
        listeners.append(listener(name, options.listen_host, tcp_out.listen, _tcp_proxy(
            name, up.cluster_name, services, "sidecar-outbound-tcp", upstream_sans=True)))
        clusters.append(_mesh_cluster(options, up))
    clusters += service_clusters(services, options.tracing)
    return RoleResources(tuple(listeners), tuple(clusters))


def sidecar(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    inbound_port: int, app: Endpoint, outbound_port: int | None = None,
    upstreams: Sequence[Upstream] = (), service_port: int = 8080,
    tcp_inbound: Sequence[TcpInbound] = (), tcp_outbound: Sequence[TcpOutbound] = (),
    egress: EgressRoute | None = None,
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

    mTLS (``options.tls``): the inbound port follows its mode (STRICT / PERMISSIVE /
    DISABLE); a plaintext chain removes peer-metadata request headers first, an mTLS chain
    hands the app the verified peer in ``x-forwarded-client-cert``, and PERMISSIVE passes TLS
    without Istio's ALPN (the app's own HTTPS) to the app as TCP; each upstream cluster
    presents our certificate and checks the upstream's SPIFFE id. The outbound logger tags
    the upstream certificate SANs for the client-side reporter.
    Egress (``egress``, needs ``outbound_port``): requests for its external hosts go to the
    egress gateway with their ``Host``, ISTIO_MUTUAL checked against the gateway's identity.
    TCP: each ``tcp_inbound`` port gets its own inbound listener (same mode, a TCP proxy to
    the app), each ``tcp_outbound`` a listener proxying to its upstream's cluster.
    """
    resources = sidecar_resources(
        workload, services, options, inbound_port=inbound_port, app=app,
        outbound_port=outbound_port, upstreams=upstreams, service_port=service_port,
        tcp_inbound=tcp_inbound, tcp_outbound=tcp_outbound, egress=egress)
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
    ingress = listener("ingress", options.listen_host, port, _hcm(
        "ingress", options, [vhost], services, log_name="ingress-gateway", edge=True,
        strip_peer_request=True, strip_peer_response=True, upstream_sans=True,
        tracing=_tracing(workload, options)))
    clusters = [_mesh_cluster(options, upstream), *service_clusters(services, options.tracing)]
    return RoleResources((ingress,), tuple(clusters))


def ingress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *,
    port: int, upstream: Upstream,
) -> Bootstrap:
    """The ingress gateway: the mesh's front door, routing everything to ``upstream``.

    It is the edge (``use_remote_address``), so ``remote_address`` rate limits see the real
    client. Host is rewritten to the upstream's FQDN, as a sidecar does. Client-sent
    peer-metadata headers are removed before anything runs; with ``options.tls`` the call to
    ``upstream`` is ISTIO_MUTUAL, checked against the upstream's SPIFFE id. ext_authz runs with
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
    # One HCM for every chain: client-sent peer-metadata headers are removed on each, as at
    # the ingress gateway, and no client certificate (XFCC) is handed to external hosts.
    hcm = _hcm("egress", options, [vhost], services, log_name="egress-gateway",
               strip_peer_request=True, forward_proxy=True,
               tracing=_tracing(workload, options))
    server_tls = downstream_tls(options.tls) if options.tls is not None else None
    egress = inbound_listener("egress", options.listen_host, port, inbound_mode(options),
                              mtls=hcm, plaintext=hcm, server_tls=server_tls)
    clusters = [forward_proxy_cluster(), *service_clusters(services, options.tracing)]
    return RoleResources((egress,), tuple(clusters))


def egress_gateway(
    workload: Workload, services: MixerServices, options: ProxyOptions, *, port: int,
) -> Bootstrap:
    """The egress gateway: an HTTP forward proxy to external hosts that a policy allows.

    Workloads send HTTP with the external ``Host``; the dynamic forward proxy resolves it.
    With ``options.tls`` the listener admits them as a sidecar's inbound port does, by the
    gateway's PeerAuthentication mode: STRICT takes only mesh mTLS (a sidecar's
    :class:`~controlplane.envoy.model.EgressRoute`), so ext_authz sees the caller's principal.
    ext_authz runs on every request with the gateway's identity, so an ALLOW policy
    selecting the egress gateway (``to.operation.hosts``, and ``from.source.principals``)
    decides who reaches which hosts; with the shipped example policy every other host gets
    403. Fails closed like the others. Client-sent peer-metadata headers are removed first.
    """
    resources = egress_gateway_resources(workload, services, options, port=port)
    return bootstrap(node(workload, "router"), options.admin, resources.listeners,
                     resources.clusters)
