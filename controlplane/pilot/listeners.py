"""Listeners and their routes: a Sidecar's ingress and egress (captureMode NONE), gateways.

- **Sidecar ingress** entry: a listener ``BIND_PORT`` (bind defaults to ``0.0.0.0``) whose only
  route sends everything to ``inbound|PORT||`` (the ``defaultEndpoint``), behind ext_authz
  with the workload's identity, the ratelimit filter and the access log ``sidecar-inbound``.
  With the mesh CA on, the chain takes mTLS per the PeerAuthentication mode: STRICT only mTLS,
  PERMISSIVE both (tls_inspector picks) and TLS without Istio's ALPN (the app's own) passed to
  the app as TCP, DISABLE plaintext.
- **Sidecar egress** entry with a port: a listener ``BIND_PORT`` (bind defaults to
  ``127.0.0.1``) over RDS (route name ``BIND_PORT``): one virtual host per visible service port,
  routes from the VirtualServices bound to ``mesh``, else straight to the service's cluster; an
  unknown Host gets 404. ext_authz is off outbound (it is enforced at the server's inbound).
- **TCP** (a Sidecar ingress or egress port with protocol TCP): Istio's TCP listeners, a
  ``tcp_proxy`` with the TCP access log to telemetry and no authorization (our authz is the
  HTTP ext_authz; Istio would use network RBAC). Ingress: ``BIND_PORT`` to
  ``inbound|PORT||`` with the PeerAuthentication mode as the HTTP inbound has (and, when
  PERMISSIVE, the app's own TLS passed through). Egress: ``BIND_PORT`` to
  ``outbound|PORT||HOST`` of the visible service with a TCP port (the one whose port number
  is the listener's if several are; else the first by host), ISTIO_MUTUAL as for HTTP.
- **Gateway** server: a listener ``BIND_PORT`` (bind defaults to the workload's address) over
  RDS (``http.PORT``): a virtual host per host of the VirtualServices bound to the Gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from controlplane.envoy.core import pack
from controlplane.envoy.filters import (
    access_log,
    authz_disabled,
    authz_per_route,
    http_filter,
    http_filters,
    tcp_access_log,
)
from controlplane.envoy.listeners import (
    TCP_PROXY,
    Tracing,
    http_connection_manager,
    inbound_listener,
    listener,
)
from controlplane.envoy.model import InboundMode, MixerServices
from controlplane.envoy.ratelimit_actions import Actions
from controlplane.envoy.roles import UNKNOWN_UPSTREAM_BODY
from controlplane.envoy.routes import (
    forward_route,
    health_route,
    not_found_route,
    peer_headers,
    route_configuration,
    virtual_host,
)
from controlplane.mesh.model import (
    ConsistentHash,
    Destination,
    EgressListener,
    HttpRoute,
    Mesh,
    Port,
    ScopedHost,
    Server,
    Service,
)
from controlplane.pilot.clusters import ClusterRef, merged_policy
from controlplane.pilot.proxy import Proxy
from controlplane.pilot.routes import FAULT_FILTER, HashFor, http_routes
from controlplane.pilot.tls import ISTIO_ALPNS, ads_source, downstream_mtls, gateway_tls

__all__ = ["Built", "egress_listener", "gateway_listener", "host_matches", "ingress_listener",
           "is_tcp", "tcp_egress_listener", "tcp_ingress_listener"]

_NON_HTTP = frozenset({"TCP", "TLS", "HTTPS", "MONGO", "MYSQL", "REDIS"})
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"



@dataclass(slots=True)
class Built:
    """What the listener builders produce for one proxy (accumulated)."""

    listeners: list[Listener] = field(default_factory=list)
    routes: list[RouteConfiguration] = field(default_factory=list)
    clusters: dict[str, ClusterRef] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Wiring:
    """How this proxy reaches our services and which limits it sends."""

    services: MixerServices
    domain: str
    rate_limits: tuple[Actions, ...]
    route_timeout: float
    mtls: bool
    trust_domain: str
    #: The HCM tracing every listener of this proxy gets (None: no tracing).
    tracing: Tracing | None = None


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching: ``*`` any host, ``*.suffix`` by suffix, else exact."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) or (host.startswith("*.") and
                                              host.endswith(pattern[1:]))
    return pattern == host


def _visible(scope: ScopedHost, service: Service, own_namespace: str) -> bool:
    if scope.namespace == "~":
        return False
    namespace = own_namespace if scope.namespace == "." else scope.namespace
    if namespace != "*" and namespace != service.namespace:
        return False
    return host_matches(scope.host, service.host)


def is_tcp(port: Port) -> bool:
    """A port proxied as opaque TCP (protocol ``TCP``)."""
    return port.protocol == "TCP"


def _http_ports(service: Service) -> tuple[Port, ...]:
    return tuple(p for p in service.ports if p.protocol not in _NON_HTTP)


def _domains(service: Service, port: Port, with_bare: bool) -> list[str]:
    suffix = f".{service.namespace}.svc.cluster.local"
    if service.host.endswith(suffix):
        short = service.host[: -len(suffix)]
        names = [short, f"{short}.{service.namespace}", f"{short}.{service.namespace}.svc",
                 service.host]
    else:
        names = [service.host]
    ported = [f"{n}:{port.number}" for n in names]
    return (names + ported) if with_bare else ported


def _with_fault(filters: list[Any]) -> list[Any]:
    # The fault filter sits just before the router; routes without a fault config skip it.
    return [*filters[:-1], http_filter(FAULT_FILTER, HTTPFault()), filters[-1]]


def _rds_listener(name: str, host: str, port: int, hcm: HttpConnectionManager,
                  route_name: str) -> Listener:
    hcm.ClearField("route_config")
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.CopyFrom(ads_source())
    return listener(name, host, port, hcm)


def _cluster_for(mesh: Mesh, built: Built, default_port: int,
                 subsets: Callable[[Service], Sequence[str]]) -> Callable[[Destination], str]:
    def name(dest: Destination) -> str:
        service = mesh.service(dest.host)
        number = dest.port
        if number is None:
            if service is not None and len(service.ports) == 1:
                number = service.ports[0].number
            else:
                number = default_port
        if service is not None:
            port = service.port(number)
            if port is not None:
                for ref in _refs(service, port, subsets(service)):
                    built.clusters.setdefault(ref.name, ref)
        return f"outbound|{number}|{dest.subset}|{dest.host}"

    return name


def hash_key(mesh: Mesh, default_port: int) -> HashFor:
    """A destination's consistent-hash key from its (subset-merged) DestinationRule policy."""
    def key(dest: Destination) -> ConsistentHash | None:
        service = mesh.service(dest.host)
        if service is None:
            return None
        port = service.port(dest.port or (service.ports[0].number if len(service.ports) == 1
                                          else default_port)) or service.ports[0]
        policy, _ = merged_policy(mesh, ClusterRef(service, port, dest.subset))
        lb = policy.load_balancer if policy is not None else None
        return lb.consistent_hash if lb is not None else None

    return key


def _refs(service: Service, port: Port, subsets: Sequence[str]) -> list[ClusterRef]:
    return [ClusterRef(service, port), *(ClusterRef(service, port, s) for s in subsets)]


def subsets_of(mesh: Mesh) -> Callable[[Service], Sequence[str]]:
    """The subset names of each service's DestinationRule."""
    def of(service: Service) -> Sequence[str]:
        rule = mesh.destination_rule_for(service.host)
        return [s.name for s in rule.subsets] if rule else []

    return of


def _mesh_routes(mesh: Mesh, service: Service) -> tuple[HttpRoute, ...]:
    return tuple(route for vs in mesh.virtual_services_for("mesh")
                 if any(host_matches(h, service.host) for h in vs.hosts) for route in vs.http)


def ingress_listener(mesh: Mesh, proxy: Proxy, wiring: Wiring, built: Built, *,
                     port: Port, bind: str, app_cluster: str, mtls_mode: str) -> None:
    """A Sidecar ingress entry's listener (the cluster ``app_cluster`` is built by the caller)."""
    ident = proxy.identity
    name = f"{bind}_{port.number}"
    # The inbound route goes to the app as is: no Host rewrite, no retries.
    vhost = virtual_host(
        "inbound", ["*"],
        [health_route(), forward_route("inbound", app_cluster, f"{wiring.route_timeout}s")],
        authz=authz_per_route(ident), rate_limits=wiring.rate_limits,
        response_headers=peer_headers(ident, "sidecar"),
    )
    hcm = http_connection_manager(
        stat_prefix=name, route_config=route_configuration(name, [vhost]),
        http_filters=http_filters(wiring.services, wiring.domain),
        access_logs=[access_log(wiring.services, "sidecar-inbound")], edge=False,
        tracing=wiring.tracing,
    )
    out = listener(name, bind, port.number, hcm)
    if wiring.mtls and mtls_mode != "DISABLE":
        plain = out.filter_chains[0]
        secure = FilterChain(name="mtls", filters=plain.filters,
                             transport_socket=downstream_mtls())
        if mtls_mode == "STRICT":
            out.ClearField("filter_chains")
            out.filter_chains.append(secure)
        else:
            # PERMISSIVE: tls_inspector tells TLS (with an istio ALPN) from plaintext; without
            # it Envoy silently sends everything to the plaintext chain.
            secure.filter_chain_match.transport_protocol = "tls"
            secure.filter_chain_match.application_protocols.extend(ISTIO_ALPNS)
            plain.name = "plaintext"
            plain.filter_chain_match.transport_protocol = "raw_buffer"
            out.filter_chains.insert(0, secure)
            # Istio's third chain: TLS offering none of its ALPNs is the app's own, passed
            # through as TCP (else Envoy resets it: no_filter_chain_match).
            passthrough = out.filter_chains.add(name="tls-passthrough")
            passthrough.filter_chain_match.transport_protocol = "tls"
            passthrough.filters.add(name=TCP_PROXY).typed_config.CopyFrom(pack(TcpProxy(
                stat_prefix=f"{name}_passthrough", cluster=app_cluster,
                access_log=[tcp_access_log(wiring.services, "sidecar-inbound-tcp")])))
            out.listener_filters.add(name=TLS_INSPECTOR).typed_config.CopyFrom(
                pack(TlsInspector()))
    built.listeners.append(out)


def _tcp_proxy(name: str, cluster: str, wiring: Wiring, log_name: str, *,
               upstream_sans: bool) -> TcpProxy:
    return TcpProxy(stat_prefix=name, cluster=cluster, access_log=[
        tcp_access_log(wiring.services, log_name, upstream_sans=upstream_sans)])


def tcp_ingress_listener(wiring: Wiring, built: Built, *, port: Port, bind: str,
                         app_cluster: str, mtls_mode: InboundMode) -> None:
    """A Sidecar ingress entry on a TCP port: a TCP proxy to the app, mTLS per
    ``mtls_mode`` as the HTTP inbound (the same proxy on every chain)."""
    name = f"{bind}_{port.number}"
    proxy = _tcp_proxy(name, app_cluster, wiring, "sidecar-inbound-tcp", upstream_sans=False)
    mode: InboundMode = mtls_mode if wiring.mtls else "DISABLE"
    built.listeners.append(inbound_listener(
        name, bind, port.number, mode, mtls=proxy, plaintext=proxy,
        server_tls=downstream_mtls() if mode != "DISABLE" else None, passthrough=proxy))


def tcp_egress_listener(mesh: Mesh, proxy: Proxy, wiring: Wiring, built: Built,
                        egress: EgressListener) -> None:
    """A Sidecar egress entry on a TCP port: a TCP proxy to the one visible TCP service
    (none visible: no listener, as there is nowhere to send the bytes)."""
    assert egress.port is not None
    candidates = [(service, port) for service in sorted(mesh.services, key=lambda s: s.host)
                  if any(_visible(h, service, proxy.workload.namespace) for h in egress.hosts)
                  for port in service.ports if is_tcp(port)]
    if not candidates:
        return
    # Without traffic capture there is no original destination to choose by: one listener
    # port stands for one service, preferably the one on the same port number.
    service, port = next((c for c in candidates if c[1].number == egress.port.number),
                         candidates[0])
    ref = ClusterRef(service, port)
    built.clusters.setdefault(ref.name, ref)
    bind = egress.bind or "127.0.0.1"
    name = f"{bind}_{egress.port.number}"
    built.listeners.append(listener(name, bind, egress.port.number, _tcp_proxy(
        name, ref.name, wiring, "sidecar-outbound-tcp", upstream_sans=True)))


def egress_listener(mesh: Mesh, proxy: Proxy, wiring: Wiring, built: Built,
                    egress: EgressListener) -> None:
    """A Sidecar egress entry with a port: listener, its route table, the clusters it uses."""
    assert egress.port is not None
    ident = proxy.identity
    bind = egress.bind or "127.0.0.1"
    name = f"{bind}_{egress.port.number}"
    subsets = subsets_of(mesh)
    vhosts: list[VirtualHost] = []
    for service in sorted(mesh.services, key=lambda s: s.host):
        if not any(_visible(h, service, proxy.workload.namespace) for h in egress.hosts):
            continue
        for index, port in enumerate(_http_ports(service)):
            for ref in _refs(service, port, subsets(service)):
                built.clusters.setdefault(ref.name, ref)
            cluster_for = _cluster_for(mesh, built, port.number, subsets)
            rules = _mesh_routes(mesh, service)
            routes = http_routes(rules or (HttpRoute(route=()),),
                                 cluster_for, port=port.number,
                                 default_timeout=wiring.route_timeout,
                                 hash_for=hash_key(mesh, port.number))
            if not rules:
                default = routes[0]
                default.name = "default"
                default.route.cluster = f"outbound|{port.number}||{service.host}"
                default.route.host_rewrite_literal = service.host
            vhosts.append(virtual_host(
                f"{service.host}:{port.number}", _domains(service, port, index == 0), routes,
                authz=authz_disabled(), request_headers=peer_headers(ident, "sidecar")))
    vhosts.append(virtual_host("unknown-upstream", ["*"],
                               [not_found_route("unknown", UNKNOWN_UPSTREAM_BODY)],
                               authz=authz_disabled()))
    built.routes.append(route_configuration(name, vhosts))
    hcm = http_connection_manager(
        stat_prefix=name, route_config=route_configuration(name, []),
        http_filters=_with_fault(list(http_filters(wiring.services, wiring.domain,
                                                   strip_peer_response=True))),
        access_logs=[access_log(wiring.services, "sidecar-outbound")], edge=False,
        tracing=wiring.tracing,
    )
    built.listeners.append(_rds_listener(name, bind, egress.port.number, hcm, name))


def gateway_listener(mesh: Mesh, proxy: Proxy, wiring: Wiring, built: Built,
                     port: int, servers: Sequence[tuple[str, Server]]) -> None:
    """One gateway port: ``servers`` are (gateway key, server) pairs sharing it."""
    ident = proxy.identity
    bind = next((s.bind for _, s in servers if s.bind), proxy.workload.address)
    name = f"{bind}_{port}"
    route_name = f"http.{port}"
    subsets = subsets_of(mesh)
    cluster_for = _cluster_for(mesh, built, port, subsets)
    by_host: dict[str, list[HttpRoute]] = {}
    for gateway_key, server in servers:
        for vs in mesh.virtual_services_for(gateway_key):
            for host in vs.hosts:
                if any(host_matches(s.host, host) or host_matches(host, s.host)
                       for s in server.hosts):
                    by_host.setdefault(host, []).extend(vs.http)
    vhosts = [
        virtual_host(
            f"{host}:{port}", ["*"] if host == "*" else [host, f"{host}:{port}"],
            [health_route(), *http_routes(rules, cluster_for, port=port,
                                          default_timeout=wiring.route_timeout,
                                          hash_for=hash_key(mesh, port))],
            authz=authz_per_route(ident), rate_limits=wiring.rate_limits,
            request_headers=peer_headers(ident, "router"))
        for host, rules in sorted(by_host.items())
    ]
    if "*" not in by_host:
        vhosts.append(virtual_host("blackhole", ["*"],
                                   [health_route(), not_found_route("unknown", "no route\n")],
                                   authz=authz_per_route(ident)))
    if any(s.tls is not None and s.tls.https_redirect and not _terminates(s)
           for _, s in servers):
        # An HTTP server with httpsRedirect answers every request with a redirect to https.
        for vhost in vhosts:
            vhost.require_tls = VirtualHost.ALL
    built.routes.append(route_configuration(route_name, vhosts))
    hcm = http_connection_manager(
        stat_prefix=name, route_config=route_configuration(route_name, []),
        http_filters=_with_fault(list(http_filters(wiring.services, wiring.domain,
                                                   strip_peer_response=True))),
        access_logs=[access_log(wiring.services, f"{wiring.domain}-gateway")], edge=True,
        tracing=wiring.tracing,
    )
    out = _rds_listener(name, bind, port, hcm, route_name)
    if any(_terminates(s) for _, s in servers):
        _tls_chains(out, [s for _, s in servers])
    built.listeners.append(out)


def _terminates(server: Server) -> bool:
    tls = server.tls
    return tls is not None and (tls.mode == "ISTIO_MUTUAL"
                                or bool(tls.server_certificate and tls.private_key))


def _tls_chains(out: Listener, servers: Sequence[Server]) -> None:
    """One filter chain per server of the port: TLS ones matched by SNI (their hosts),
    plaintext ones by ``raw_buffer``; tls_inspector reads the ClientHello."""
    base = FilterChain()
    base.CopyFrom(out.filter_chains[0])
    out.ClearField("filter_chains")
    for server in servers:
        chain = out.filter_chains.add()
        chain.CopyFrom(base)
        chain.name = server.name or f"{server.port.name}"
        if _terminates(server) and server.tls is not None:
            chain.filter_chain_match.transport_protocol = "tls"
            names = sorted({h.host for h in server.hosts if h.host != "*"})
            chain.filter_chain_match.server_names.extend(names)
            chain.transport_socket.CopyFrom(gateway_tls(server.tls))
        else:
            chain.filter_chain_match.transport_protocol = "raw_buffer"
    out.listener_filters.add(name=TLS_INSPECTOR).typed_config.CopyFrom(pack(TlsInspector()))
