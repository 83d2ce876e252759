"""The mesh model: what a directory of Istio files means, validated, resolved and immutable.

Everything here is a frozen, slotted dataclass built once per load by ``loader.load_mesh``;
nothing knows about YAML or Envoy. Hosts are fully qualified (Istio's short-name rule applied),
references between resources are resolved where the loader can resolve them (service
endpoints from inline endpoints and WorkloadEntries, subsets to endpoints), and each resource
remembers where it came from (``Origin``) so analyzers and builders can point at the file.

Durations are seconds (float). Mappings are read-only views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the owning loaders' types; the model itself never imports them at runtime
    from controlplane.security.peerauthn import PeerAuthentication
    from extauthz.policy import PolicySet
    from ratelimit.config import RateLimitConfig
    from telemetry.config import TelemetryConfig

EMPTY: Mapping[str, Any] = MappingProxyType({})

#: The namespace whose policies apply mesh-wide (Istio's default root namespace).
ROOT_NAMESPACE = "istio-system"


def frozen_map(items: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy of ``items``."""
    return MappingProxyType(dict(items or {}))


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when ``labels`` carry every ``selector`` label (an empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class Origin:
    """Which resource something came from: kind, namespace/name, file and line."""

    kind: str
    namespace: str
    name: str
    file: str
    line: int | None

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{self.kind} {self.key} {where}"


# ------------------------------------------------------------------------- services, workloads


@dataclass(frozen=True, slots=True)
class Port:
    """A port of a service, a Sidecar listener or a Gateway server.

    ``protocol`` is upper-case, empty when the file names none; ``target_port`` is a
    ServiceEntry's default endpoint port.
    """

    number: int
    name: str = ""
    protocol: str = ""
    target_port: int | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a service: an inline ServiceEntry endpoint or a selected WorkloadEntry.

    ``ports`` maps a service port name to the endpoint's port; ``workload`` is the
    WorkloadEntry's ``namespace/name`` (None for an inline endpoint).
    """

    address: str
    ports: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    service_account: str = ""
    weight: int = 0
    workload: str | None = None

    def port_for(self, port: Port) -> int:
        """Where this endpoint serves ``port``: its own port of that name, else the
        ServiceEntry's targetPort, else the port's number (Istio's order)."""
        return self.ports.get(port.name) or port.target_port or port.number


Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]
Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"]


@dataclass(frozen=True, slots=True)
class Service:
    """One host of a ServiceEntry (a ServiceEntry with two hosts gives two Services)."""

    host: str
    namespace: str
    ports: tuple[Port, ...]
    location: Location
    resolution: Resolution
    endpoints: tuple[Endpoint, ...]
    origin: Origin
    addresses: tuple[str, ...] = ()
    #: The ServiceEntry's workloadSelector labels; None when its endpoints are inline.
    selector: Mapping[str, str] | None = None
    subject_alt_names: tuple[str, ...] = ()

    def port(self, number: int) -> Port | None:
        """The service port ``number``, if the service has it."""
        return next((p for p in self.ports if p.number == number), None)


@dataclass(frozen=True, slots=True)
class Workload:
    """A WorkloadEntry: one process (and its Envoy) at ``address``."""

    name: str
    namespace: str
    address: str
    labels: Mapping[str, str]
    service_account: str
    ports: Mapping[str, int]
    origin: Origin
    weight: int = 0

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


# ------------------------------------------------------------------------------------ Sidecar

CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


@dataclass(frozen=True, slots=True)
class IngressListener:
    """Sidecar ``ingress[]``: a port on ``bind`` forwarded to the app at ``default_endpoint``."""

    port: Port
    bind: str
    capture_mode: CaptureMode
    default_endpoint: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ScopedHost:
    """A ``namespace/host`` of Sidecar egress or Gateway hosts (``*``, ``.`` or ``~`` allowed
    as namespace, ``*`` and ``*.suffix`` as host)."""

    namespace: str
    host: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.host}"


@dataclass(frozen=True, slots=True)
class EgressListener:
    """Sidecar ``egress[]``: what the app dials (a port on ``bind``) and which hosts it sees."""

    port: Port | None
    bind: str
    capture_mode: CaptureMode
    hosts: tuple[ScopedHost, ...]
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Sidecar:
    """A Sidecar resource; ``selector`` None applies to every workload of its namespace."""

    origin: Origin
    selector: Mapping[str, str] | None
    ingress: tuple[IngressListener, ...]
    egress: tuple[EgressListener, ...]
    #: REGISTRY_ONLY or ALLOW_ANY; Istio's mesh default ALLOW_ANY when the file sets none.
    outbound_traffic_policy: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "ALLOW_ANY"


# ------------------------------------------------------------------------------------ Gateway


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A Gateway server's TLS (certificates are file paths)."""

    mode: Literal["SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]
    https_redirect: bool = False
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Server:
    """A Gateway ``servers[]`` entry."""

    port: Port
    hosts: tuple[ScopedHost, ...]
    bind: str = ""
    tls: ServerTLS | None = None
    name: str = ""
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Gateway: the servers of the gateway workloads ``selector`` picks."""

    origin: Origin
    selector: Mapping[str, str]
    servers: tuple[Server, ...]


# ----------------------------------------------------------------------------- VirtualService


@dataclass(frozen=True, slots=True)
class StringMatch:
    """``exact``, ``prefix`` or ``regex`` (RE2) against ``value``."""

    kind: Literal["exact", "prefix", "regex"]
    value: str


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One ``match[]`` entry: every condition that is set must hold."""

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """A route target: a fully qualified ``host``, optionally a subset and a port."""

    host: str
    subset: str = ""
    port: int | None = None
    #: As written in the file (before short-name resolution), for messages.
    written: str = ""
    line: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOperations:
    """Headers to set (replace), add (append) and remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Headers:
    """Request and response header manipulation."""

    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


@dataclass(frozen=True, slots=True)
class WeightedDestination:
    """One ``route[]`` entry: it gets ``weight`` / (sum of the route's weights) of the
    requests; a lone destination gets them all, whatever its weight (Istio's rule)."""

    destination: Destination
    weight: int = 0
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """``redirect``: ``port`` or ``derive_port`` (at most one), default code 301."""

    uri: str = ""
    authority: str = ""
    port: int | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirect_code: int = 301
    prefix_rewrite: str = ""


@dataclass(frozen=True, slots=True)
class RegexRewrite:
    """``uriRegexRewrite``."""

    match: str
    rewrite: str


@dataclass(frozen=True, slots=True)
class Rewrite:
    """``rewrite``: the uri prefix (or a regex rewrite) and the authority."""

    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """``retries``."""

    attempts: int
    per_try_timeout: float | None = None
    retry_on: str = ""
    backoff: float | None = None


@dataclass(frozen=True, slots=True)
class Delay:
    """A fixed delay for ``percentage`` % of requests (None: all of them)."""

    fixed_delay: float
    percentage: float | None = None


@dataclass(frozen=True, slots=True)
class Abort:
    """An HTTP or gRPC status for ``percentage`` % of requests (None: all of them)."""

    http_status: int | None = None
    grpc_status: str | None = None
    percentage: float | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """``fault``."""

    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One ``http[]`` route: ``route`` destinations or a ``redirect``, never both."""

    match: tuple[HttpMatch, ...] = ()
    route: tuple[WeightedDestination, ...] = ()
    name: str = ""
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None
    retries: Retry | None = None
    fault: Fault | None = None
    headers: Headers | None = None
    line: int | None = None


#: The gateway name that means "the sidecars of the mesh".
MESH_GATEWAY = "mesh"


@dataclass(frozen=True, slots=True)
class VirtualService:
    """A VirtualService: ``hosts`` fully qualified (except wildcards), ``gateways`` as
    ``namespace/name`` or ``mesh`` (Istio's default when none is listed)."""

    origin: Origin
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    http: tuple[HttpRoute, ...]

    def destinations(self) -> tuple[Destination, ...]:
        """Every route destination, in file order."""
        return tuple(d.destination for r in self.http for d in r.route)


# ---------------------------------------------------------------------------- DestinationRule


@dataclass(frozen=True, slots=True)
class RingHash:
    """Ring-hash parameters."""

    minimum_ring_size: int = 0


@dataclass(frozen=True, slots=True)
class MagLev:
    """Maglev parameters."""

    table_size: int = 0


@dataclass(frozen=True, slots=True)
class HttpCookie:
    """Hash on a cookie (generated with ``ttl`` when absent)."""

    name: str
    path: str = ""
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """Exactly one hash key; ``ring_hash``/``maglev`` choose the algorithm."""

    http_header_name: str | None = None
    http_cookie: HttpCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """``simple`` or ``consistent_hash``."""

    simple: str | None = None
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP keepalive probes."""

    probes: int = 0
    time: float | None = None
    interval: float | None = None


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """Connection pool, TCP side (0 / None: Envoy's default)."""

    max_connections: int = 0
    connect_timeout: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: float | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Connection pool, HTTP side (0 / None: Envoy's default)."""

    http1_max_pending_requests: int = 0
    http2_max_requests: int = 0
    max_requests_per_connection: int = 0
    max_retries: int = 0
    idle_timeout: float | None = None
    h2_upgrade_policy: str = "DEFAULT"
    use_client_protocol: bool = False
    max_concurrent_streams: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """``connectionPool``."""

    tcp: TcpSettings | None = None
    http: HttpSettings | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """``outlierDetection``."""

    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int = 0
    min_health_percent: int = 0


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """Upstream TLS: ISTIO_MUTUAL (mesh CA), DISABLE, or SIMPLE (``ca_certificates`` file)."""

    mode: Literal["DISABLE", "SIMPLE", "ISTIO_MUTUAL"] = "DISABLE"
    ca_certificates: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """``trafficPolicy`` of a DestinationRule or one of its subsets."""

    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLS | None = None


@dataclass(frozen=True, slots=True)
class Subset:
    """A named subset; ``endpoints`` are the service's endpoints carrying all ``labels``."""

    name: str
    labels: Mapping[str, str]
    endpoints: tuple[Endpoint, ...] = ()
    traffic_policy: TrafficPolicy | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """A DestinationRule for ``host`` (fully qualified, or a wildcard)."""

    origin: Origin
    host: str
    subsets: tuple[Subset, ...]
    traffic_policy: TrafficPolicy | None = None

    def subset(self, name: str) -> Subset | None:
        """The subset called ``name``, if any."""
        return next((s for s in self.subsets if s.name == name), None)


# ----------------------------------------------------------------------------- other kinds


@dataclass(frozen=True, slots=True)
class RawDocument:
    """A resource the mesh does not model itself, kept for the loader that owns its kind.

    ``kind`` is the Istio kind (AuthorizationPolicy, RequestAuthentication,
    PeerAuthentication) or ``ratelimit`` / ``telemetry`` for our own files; ``data`` is the
    document as parsed (read-only by convention); ``selector`` its ``spec.selector.matchLabels``
    (None when it has none), for the analyzers.
    """

    kind: str
    path: str
    origin: Origin
    data: Any
    selector: Mapping[str, str] | None = None


# ------------------------------------------------------------------------------------ Mesh


@dataclass(frozen=True, slots=True)
class Mesh:
    """Everything a directory of mesh files describes, valid and resolved.

    ``authz``, ``peer_authentications``, ``ratelimit`` and ``telemetry`` are what the owning
    loaders built from the same files (a ``PolicySet``, ``PeerAuthentication`` values, a
    ``RateLimitConfig`` or None, a ``TelemetryConfig`` or None), so the control plane never
    re-parses them.
    """

    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    documents: tuple[RawDocument, ...] = ()
    authz: PolicySet | None = None
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    ratelimit: RateLimitConfig | None = None
    telemetry: TelemetryConfig | None = None
    files: tuple[str, ...] = ()
    _by_host: Mapping[str, Service] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # An index built once; object.__setattr__ because the dataclass is frozen.
        object.__setattr__(self, "_by_host", MappingProxyType({s.host: s for s in self.services}))

    def service(self, host: str) -> Service | None:
        """The service whose host is exactly ``host``."""
        return self._by_host.get(host)

    def gateway(self, key: str) -> Gateway | None:
        """The Gateway ``namespace/name``."""
        return next((g for g in self.gateways if g.origin.key == key), None)

    def documents_of(self, kind: str) -> tuple[RawDocument, ...]:
        """The raw documents of one kind (e.g. ``AuthorizationPolicy`` or ``ratelimit``)."""
        return tuple(d for d in self.documents if d.kind == kind)

    def sidecar_for(self, workload: Workload) -> Sidecar | None:
        """The Sidecar that configures ``workload``'s Envoy, by Istio's precedence: one in its
        namespace whose selector matches, else its namespace's Sidecar without a selector,
        else the root namespace's Sidecar without a selector."""
        own = [s for s in self.sidecars if s.origin.namespace == workload.namespace]
        for sidecar in own:
            if sidecar.selector and labels_match(sidecar.selector, workload.labels):
                return sidecar
        for sidecar in own:
            if not sidecar.selector:
                return sidecar
        return next((s for s in self.sidecars
                     if s.origin.namespace == ROOT_NAMESPACE and not s.selector), None)

    def gateways_for(self, workload: Workload) -> tuple[Gateway, ...]:
        """The Gateways whose selector matches ``workload`` (gateway workloads, any namespace)."""
        return tuple(g for g in self.gateways
                     if g.selector and labels_match(g.selector, workload.labels))

    def virtual_services_for(self, gateway: str) -> tuple[VirtualService, ...]:
        """The VirtualServices bound to ``gateway`` (``namespace/name``, or ``mesh``)."""
        return tuple(v for v in self.virtual_services if gateway in v.gateways)

    def destination_rule_for(self, host: str) -> DestinationRule | None:
        """The DestinationRule for ``host``: the one naming it exactly, else the one with the
        most specific wildcard covering it (Istio's host precedence)."""
        exact = next((r for r in self.destination_rules if r.host == host), None)
        if exact is not None:
            return exact
        covering = [r for r in self.destination_rules
                    if r.host.startswith("*") and (r.host == "*" or host.endswith(r.host[1:]))]
        return max(covering, key=lambda r: len(r.host), default=None)

    def workloads_matching(self, namespace: str | None,
                           selector: Mapping[str, str] | None) -> tuple[Workload, ...]:
        """The workloads of ``namespace`` (None: every namespace) carrying ``selector``."""
        return tuple(
            w for w in self.workloads
            if (namespace is None or w.namespace == namespace)
            and labels_match(selector or {}, w.labels)
        )
