"""One proxy's resources from the mesh, and every proxy's at once (pure; golden-tested).

``generate(mesh, proxy, context)`` gives the listeners, route tables, clusters, endpoints and
secrets of one Envoy; :func:`generate_all` does every WorkloadEntry of the mesh. The control
plane turns each result into a versioned snapshot (:mod:`controlplane.xds.cache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from controlplane.ca.authority import IssuedCertificate
from controlplane.envoy.clusters import inbound_cluster, service_clusters
from controlplane.envoy.listeners import Tracing, tracing_config
from controlplane.envoy.model import Endpoint as HostPort
from controlplane.envoy.model import MixerServices
from controlplane.envoy.ratelimit_actions import Actions, actions_for_paths
from controlplane.mesh.model import Mesh, Server
from controlplane.pilot.clusters import outbound_cluster
from controlplane.pilot.endpoints import load_assignment
from controlplane.pilot.listeners import (
    Built,
    Wiring,
    egress_listener,
    gateway_listener,
    ingress_listener,
    is_tcp,
    tcp_egress_listener,
    tcp_ingress_listener,
)
from controlplane.pilot.proxy import Proxy, proxies
from controlplane.pilot.secrets import workload_secrets
from controlplane.security.mtls import effective_mtls

__all__ = ["Context", "ProxyResources", "generate", "generate_all"]


@dataclass(frozen=True, slots=True)
class Context:
    """What generation needs besides the mesh.

    ``certificates`` maps a proxy key to its current workload certificate; when the control
    plane runs with the mesh CA (``mtls``) every proxy has one and inbound listeners take mTLS
    per PeerAuthentication. ``tracing`` (an OTLP/gRPC collector) makes every HTTP connection
    manager trace to it, as the static configs' ``--tracing`` does.
    """

    services: MixerServices = field(default_factory=MixerServices)
    trust_domain: str = "cluster.local"
    mtls: bool = False
    certificates: Mapping[str, IssuedCertificate] = field(
        default_factory=lambda: MappingProxyType({}))
    route_timeout: float = 15.0
    tracing: HostPort | None = None


@dataclass(frozen=True, slots=True)
class ProxyResources:
    """Everything one proxy is given, by kind."""

    listeners: tuple[Listener, ...] = ()
    routes: tuple[RouteConfiguration, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    endpoints: tuple[ClusterLoadAssignment, ...] = ()
    secrets: tuple[Secret, ...] = ()


def _rate_limits(mesh: Mesh, domain: str) -> tuple[Actions, ...]:
    config = mesh.ratelimit
    if config is None or domain not in config.domains:
        return ()
    return tuple(actions_for_paths(config.descriptor_paths(domain)))


def _tracing(proxy: Proxy, context: Context) -> Tracing | None:
    # Istio's default span service name (APP_LABEL_AND_NAMESPACE): the canonical name and the
    # namespace, which is also what the static builder names it.
    if context.tracing is None:
        return None
    return tracing_config(f"{proxy.canonical_name}.{proxy.workload.namespace}")


def generate(mesh: Mesh, proxy: Proxy, context: Context) -> ProxyResources:
    """The resources of ``proxy``."""
    wiring = Wiring(services=context.services, domain=proxy.ratelimit_domain,
                    rate_limits=_rate_limits(mesh, proxy.ratelimit_domain),
                    route_timeout=context.route_timeout, mtls=context.mtls,
                    trust_domain=context.trust_domain, tracing=_tracing(proxy, context))
    built = Built()
    inbound: list[Cluster] = []
    if proxy.sidecar is not None:
        mtls = effective_mtls(mesh.peer_authentications, namespace=proxy.workload.namespace,
                              labels=proxy.workload.labels)
        for ingress in proxy.sidecar.ingress:
            if ingress.default_endpoint.startswith("unix://"):
                continue  # a unix-socket app needs a pipe address; not generated yet
            # An app listening on 0.0.0.0 is dialled on loopback, as Istio's sidecar does.
            app = HostPort.parse(ingress.default_endpoint.replace("0.0.0.0", "127.0.0.1"))
            to_app = inbound_cluster(proxy.identity, ingress.port.number, app)
            inbound.append(to_app)
            bind = ingress.bind or "0.0.0.0"
            mode = mtls.for_port(ingress.port.number)
            if is_tcp(ingress.port):
                tcp_ingress_listener(wiring, built, port=ingress.port, bind=bind,
                                     app_cluster=to_app.name, mtls_mode=mode)
            else:
                ingress_listener(mesh, proxy, wiring, built, port=ingress.port, bind=bind,
                                 app_cluster=to_app.name, mtls_mode=mode)
        for egress in proxy.sidecar.egress:
            if egress.port is None:
                continue
            if is_tcp(egress.port):
                tcp_egress_listener(mesh, proxy, wiring, built, egress)
            else:
                egress_listener(mesh, proxy, wiring, built, egress)
    by_port: dict[int, list[tuple[str, Server]]] = {}
    for gateway in proxy.gateways:
        for server in gateway.servers:
            by_port.setdefault(server.port.number, []).append((gateway.origin.key, server))
    for port, servers in sorted(by_port.items()):
        gateway_listener(mesh, proxy, wiring, built, port, servers)
    refs = [built.clusters[name] for name in sorted(built.clusters)]
    clusters = [*inbound, *(outbound_cluster(mesh, r, context.trust_domain, auto_mtls=context.mtls)
                   for r in refs),
                *service_clusters(context.services, context.tracing)]
    endpoints = [load_assignment(mesh, r) for r in refs if r.eds]
    issued = context.certificates.get(proxy.key)
    return ProxyResources(
        listeners=tuple(built.listeners), routes=tuple(built.routes), clusters=tuple(clusters),
        endpoints=tuple(endpoints),
        secrets=tuple(workload_secrets(issued)) if issued is not None else (),
    )


def generate_all(mesh: Mesh, context: Context) -> dict[str, ProxyResources]:
    """Every proxy's resources, by proxy key."""
    return {proxy.key: generate(mesh, proxy, context) for proxy in proxies(mesh)}
