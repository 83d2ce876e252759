"""The demo mesh's topology, rendered for each place it runs: ``mixer up``, the shipped
``envoy-configs/`` files and docker-compose.

::

    client ──▶ ingress-gateway ──▶ frontend sidecar (inbound) ──▶ frontend app
                                                                     │ Host: backend
                frontend sidecar (outbound) ◀────────────────────────┘
                      │
                      ▼
               backend sidecar (inbound) ──▶ backend app

Every proxy calls ``authz`` (ext_authz), ``ratelimit`` (RLS) and ``telemetry`` (ALS). The
egress gateway is rendered too (shipped and in compose): the frontend sidecar sends the
external hosts of :data:`EGRESS_HOSTS` there (mTLS, like every other hop of the mesh).

With a :class:`MeshSecurity` every proxy reads its certificate from
``<cert_root>/<CERT_DIRS[role]>/`` (what ``mixer ca issue`` writes) and every hop inside the
mesh is mTLS: each sidecar's inbound port takes the mode its PeerAuthentication resolves to
(Istio's precedence, :mod:`controlplane.security`), and a client originates mTLS to every
destination that is not DISABLE (Istio's auto mTLS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from controlplane.envoy.model import (
    DEFAULT_TRUST_DOMAIN,
    EgressRoute,
    Endpoint,
    InboundMode,
    MeshTls,
    MixerServices,
    ProxyOptions,
    Upstream,
    Workload,
)
from controlplane.envoy.ratelimit_actions import Actions
from controlplane.envoy.roles import egress_gateway, ingress_gateway, sidecar
from controlplane.security import PeerAuthentication, effective_mtls

#: Identities of the mesh's proxies (Istio's names for the gateways and their accounts).
FRONTEND = Workload("frontend", "default", version="v1")
BACKEND = Workload("backend", "default", version="v1")
INGRESS = Workload("istio-ingressgateway", "istio-system", app="istio-ingressgateway",
                   extra_labels=(("istio", "ingressgateway"),),
                   service_account="istio-ingressgateway-service-account")
EGRESS = Workload("istio-egressgateway", "istio-system", app="istio-egressgateway",
                  extra_labels=(("istio", "egressgateway"),),
                  service_account="istio-egressgateway-service-account")

#: Each proxy's workload, and its certificate directory under ``MeshSecurity.cert_root``.
WORKLOADS = {"ingress-gateway": INGRESS, "egress-gateway": EGRESS,
             "sidecar-frontend": FRONTEND, "sidecar-backend": BACKEND}
CERT_DIRS = {"ingress-gateway": "ingress", "egress-gateway": "egress",
             "sidecar-frontend": "frontend", "sidecar-backend": "backend"}

#: Rate-limit domain each proxy sends (the ratelimit config's ``domain:``).
DOMAINS = {"ingress-gateway": "ingress", "egress-gateway": "egress",
           "sidecar-frontend": "frontend", "sidecar-backend": "backend"}

#: External hosts the frontend reaches through the egress gateway: those the example egress
#: policy (``examples/policy.yaml``) allows.
EGRESS_HOSTS = ("httpbin.org", "*.example.com")

#: The logical service port (Istio cluster names use it, wherever the process really listens).
SERVICE_PORT = 8080


@dataclass(frozen=True, slots=True)
class WorkloadPorts:
    """Where one workload's app and sidecar are reached (``Endpoint.host`` = how peers dial)."""

    app: Endpoint
    inbound: Endpoint
    outbound: Endpoint
    admin: Endpoint


@dataclass(frozen=True, slots=True)
class Mesh:
    """Every address of the demo mesh."""

    listen_host: str
    ingress: Endpoint
    ingress_admin: Endpoint
    egress: Endpoint
    egress_admin: Endpoint
    frontend: WorkloadPorts
    backend: WorkloadPorts
    services: MixerServices
    tracing: Endpoint | None = None


def local_mesh(port_base: int | None = None, host: str = "127.0.0.1") -> Mesh:
    """The ``mixer up`` layout on one machine.

    Default (``port_base`` None): ingress 8080 (admin 8083), frontend app/inbound/outbound/admin
    8090-8093, backend 8100-8103, egress 8110 (admin 8113), and the services on their usual
    ports (authz 9191/9192, ratelimit 8081/6070, telemetry 9401/9402). With ``port_base`` N
    everything moves to N+offset (services at N+40.., so several meshes can coexist).
    """
    b = 8080 if port_base is None else port_base

    def ep(offset: int) -> Endpoint:
        return Endpoint(host, b + offset)

    def ports(first: int) -> WorkloadPorts:
        return WorkloadPorts(ep(first), ep(first + 1), ep(first + 2), ep(first + 3))

    if port_base is None:
        services = MixerServices(authz=Endpoint(host, 9191), ratelimit=Endpoint(host, 8081),
                                 telemetry=Endpoint(host, 9401), log_flush_interval="0.5s")
    else:
        services = MixerServices(authz=ep(40), ratelimit=ep(42), telemetry=ep(44),
                                 log_flush_interval="0.5s")
    return Mesh(listen_host=host, ingress=ep(0), ingress_admin=ep(3), egress=ep(30),
                egress_admin=ep(33), frontend=ports(10), backend=ports(20), services=services)


def service_admin_ports(port_base: int | None) -> dict[str, int]:
    """Admin (``/metrics``, ``/healthz``) ports of the services in the ``local_mesh`` layout."""
    if port_base is None:
        return {"authz": 9192, "ratelimit": 6070, "telemetry": 9402}
    return {"authz": port_base + 41, "ratelimit": port_base + 43, "telemetry": port_base + 45}


def compose_mesh() -> Mesh:
    """The docker-compose layout: one container per process, reached by service DNS name."""
    def wl(name: str) -> WorkloadPorts:
        side = f"{name}-sidecar"
        return WorkloadPorts(Endpoint(name, 8080), Endpoint(side, 15006),
                             Endpoint(side, 15001), Endpoint(side, 15000))

    return Mesh(
        listen_host="0.0.0.0",
        ingress=Endpoint("ingress", 8080), ingress_admin=Endpoint("ingress", 15000),
        egress=Endpoint("egress", 8080), egress_admin=Endpoint("egress", 15000),
        frontend=wl("frontend"), backend=wl("backend"),
        services=MixerServices(authz=Endpoint("authz", 9191),
                               ratelimit=Endpoint("ratelimit", 8081),
                               telemetry=Endpoint("telemetry", 9401)),
        tracing=Endpoint("jaeger", 4317),
    )


@dataclass(frozen=True, slots=True)
class MeshSecurity:
    """Certificates and PeerAuthentication for the demo mesh's mTLS."""

    #: Absolute directory holding one certificate directory per proxy (``CERT_DIRS``).
    cert_root: str
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    #: ``--mtls``: one mode for every sidecar, over whatever the policies say.
    mode_override: InboundMode | None = None
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def mode_of(self, workload: Workload, port: int = SERVICE_PORT) -> InboundMode:
        """The inbound mode of ``workload`` on ``port`` (PERMISSIVE when nothing applies)."""
        if self.mode_override is not None:
            return self.mode_override
        return effective_mtls(self.peer_authentications, namespace=workload.namespace,
                              labels=workload.labels).for_port(port)

    def tls(self, role: str) -> MeshTls:
        """The mTLS settings of one proxy of the mesh."""
        return MeshTls(cert_dir=f"{self.cert_root.rstrip('/')}/{CERT_DIRS[role]}",
                       mode=self.mode_of(WORKLOADS[role]), trust_domain=self.trust_domain)


def render_mesh(
    mesh: Mesh, rate_limits: Mapping[str, Sequence[Actions]] | None = None,
    security: MeshSecurity | None = None,
) -> dict[str, Bootstrap]:
    """Bootstraps of every proxy, keyed ``ingress-gateway``, ``sidecar-frontend``, ...

    ``rate_limits`` maps a rate-limit domain to its derived actions; ``security`` None
    renders the mesh in plaintext.
    """
    limits = rate_limits or {}

    def options(role: str, admin: Endpoint) -> ProxyOptions:
        domain = DOMAINS[role]
        return ProxyOptions(
            listen_host=mesh.listen_host,
            admin=Endpoint(mesh.listen_host, admin.port),
            ratelimit_domain=domain,
            rate_limits=tuple(limits.get(domain, ())),
            tracing=mesh.tracing,
            tls=security.tls(role) if security is not None else None,
        )

    def upstream(workload: Workload, address: Endpoint) -> Upstream:
        mtls = security is not None and security.mode_of(workload) != "DISABLE"
        return Upstream(workload.name, address, workload.namespace, SERVICE_PORT,
                        service_account=workload.account, mtls=mtls)

    backend_up = upstream(BACKEND, mesh.backend.inbound)
    frontend_up = upstream(FRONTEND, mesh.frontend.inbound)
    egress = EgressRoute.to(mesh.egress, EGRESS_HOSTS, port=mesh.egress.port,
                            mtls=security is not None and security.mode_of(EGRESS) != "DISABLE")
    return {
        "ingress-gateway": ingress_gateway(
            INGRESS, mesh.services, options("ingress-gateway", mesh.ingress_admin),
            port=mesh.ingress.port, upstream=frontend_up),
        "sidecar-frontend": sidecar(
            FRONTEND, mesh.services, options("sidecar-frontend", mesh.frontend.admin),
            inbound_port=mesh.frontend.inbound.port, app=mesh.frontend.app,
            outbound_port=mesh.frontend.outbound.port, upstreams=[backend_up],
            service_port=SERVICE_PORT, egress=egress),
        "sidecar-backend": sidecar(
            BACKEND, mesh.services, options("sidecar-backend", mesh.backend.admin),
            inbound_port=mesh.backend.inbound.port, app=mesh.backend.app,
            service_port=SERVICE_PORT),
        "egress-gateway": egress_gateway(
            EGRESS, mesh.services, options("egress-gateway", mesh.egress_admin),
            port=mesh.egress.port),
    }
