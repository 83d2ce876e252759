"""The data model behind every generated Envoy config: who a proxy is and whom it talks to.

These are plain frozen values. The builders (:mod:`.roles` and the modules it composes) turn
them into typed Envoy messages; nothing here imports Envoy's protos or knows about YAML.
Durations are strings in protobuf's JSON form (``"0.5s"``), as they appear in Envoy configs.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from controlplane.envoy.ratelimit_actions import Actions

# The wire contract (peer headers, metadata namespaces, the physical-peer header) is defined
# once in envoy_mixer.common.wire and shared with the services that read it; re-exported here
# for the builders.
from envoy_mixer.common.wire import AUTHZ_METADATA_NAMESPACE as AUTHZ_METADATA_NAMESPACE

# The mesh's default trust domain (Istio's ``cluster.local``).
from envoy_mixer.common.wire import DEFAULT_TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN
from envoy_mixer.common.wire import DIRECT_PEER_HEADER as DIRECT_PEER_HEADER
from envoy_mixer.common.wire import DIRECT_REMOTE_IP_KEY as DIRECT_REMOTE_IP_KEY
from envoy_mixer.common.wire import PEER_METADATA_HEADER as PEER_METADATA_HEADER
from envoy_mixer.common.wire import PEER_METADATA_ID_HEADER as PEER_METADATA_ID_HEADER
from envoy_mixer.common.wire import PEER_STASH_NAMESPACE as PEER_STASH_NAMESPACE
from envoy_mixer.common.wire import spiffe_uri as spiffe_uri

#: Cluster names of our three services inside every generated config.
AUTHZ_CLUSTER = "mixer_authz"
RATELIMIT_CLUSTER = "mixer_ratelimit"
TELEMETRY_CLUSTER = "mixer_telemetry"
TRACING_CLUSTER = "mixer_tracing"

#: How an inbound port admits peers: Istio's resolved PeerAuthentication modes.
InboundMode = Literal["DISABLE", "PERMISSIVE", "STRICT"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A ``host:port`` Envoy connects to or listens on; ``host`` may be an IP or a DNS name."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``"127.0.0.1:9191"`` or ``"authz:9191"`` -> Endpoint."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is a literal IP address (a STATIC cluster; else STRICT_DNS)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Workload:
    """The identity of the workload a proxy stands for, in Istio's vocabulary."""

    name: str
    namespace: str = "default"
    app: str | None = None
    version: str = "v1"
    extra_labels: tuple[tuple[str, str], ...] = ()
    ip: str = "127.0.0.1"
    pod: str | None = None
    cluster_id: str = "Kubernetes"
    #: The Kubernetes service account it runs as (its certificate's identity); default: name.
    service_account: str | None = None

    @property
    def account(self) -> str:
        """The service account (defaults to the workload name, one account per Deployment)."""
        return self.service_account or self.name

    def principal(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        """The SPIFFE id in this workload's mesh certificate."""
        return spiffe_uri(trust_domain, self.namespace, self.account)

    @property
    def app_label(self) -> str:
        """The ``app`` label (defaults to the workload name)."""
        return self.app or self.name

    @property
    def pod_name(self) -> str:
        """The pod name in the node id and ``NAME`` metadata (a stable made-up one by default)."""
        return self.pod or f"{self.name}-0"

    @property
    def labels(self) -> dict[str, str]:
        """Workload labels, incl. Istio's canonical-name/revision labels telemetry reads."""
        labels = {
            "app": self.app_label,
            "version": self.version,
            "service.istio.io/canonical-name": self.app_label,
            "service.istio.io/canonical-revision": self.version,
        }
        labels.update(dict(self.extra_labels))
        return labels

    def node_id(self, proxy_type: str) -> str:
        """Istio's ``<type>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`` node id."""
        ns = self.namespace
        return f"{proxy_type}~{self.ip}~{self.pod_name}.{ns}~{ns}.svc.cluster.local"

    def metadata(self) -> dict[str, object]:
        """Node metadata with the keys Istio's proxies carry and our telemetry reads."""
        return {
            "NAME": self.pod_name,
            "NAMESPACE": self.namespace,
            "WORKLOAD_NAME": self.name,
            "CLUSTER_ID": self.cluster_id,
            "LABELS": self.labels,
            "SERVICE_ACCOUNT": self.account,
        }

    @property
    def node_cluster(self) -> str:
        """The bootstrap ``node.cluster``: ``<name>.<namespace>``."""
        return f"{self.name}.{self.namespace}"

    def peer_metadata_header(self) -> str:
        """Base64 of compact JSON of this workload's metadata: the peer-metadata header value."""
        compact = json.dumps(self.metadata(), separators=(",", ":"), sort_keys=True)
        return base64.b64encode(compact.encode()).decode()

    def context_extensions(self) -> dict[str, str]:
        """ext_authz ``context_extensions``: ``namespace`` and ``label.<name>`` per label."""
        ext = {"namespace": self.namespace, "workload": self.name}
        for key, value in self.labels.items():
            ext[f"label.{key}"] = value
        return ext


@dataclass(frozen=True, slots=True)
class MixerServices:
    """Where the three services listen, and how long Envoy waits for each."""

    authz: Endpoint = Endpoint("127.0.0.1", 9191)
    ratelimit: Endpoint = Endpoint("127.0.0.1", 8081)
    telemetry: Endpoint = Endpoint("127.0.0.1", 9401)
    authz_timeout: str = "0.5s"
    ratelimit_timeout: str = "0.25s"
    #: How often buffered access-log entries are flushed to telemetry.
    log_flush_interval: str = "1s"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A service this proxy routes to: its mesh name and where its sidecar/app listens."""

    service: str
    address: Endpoint
    namespace: str = "default"
    port: int = 8080
    #: The service account its workloads run as (the SAN the client verifies); default: service.
    service_account: str | None = None
    #: Originate mTLS to it (when the proxy has a certificate): False for a DISABLE peer.
    mtls: bool = True

    def principal(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
        """The SPIFFE id the destination must present (Istio's ISTIO_MUTUAL SAN check)."""
        return spiffe_uri(trust_domain, self.namespace, self.service_account or self.service)

    @property
    def sni(self) -> str:
        """Istio's mTLS SNI ``outbound_.<port>_.<subset>_.<fqdn>`` (no subset: ``_``)."""
        return f"outbound_.{self.port}_._.{self.fqdn}"

    @property
    def fqdn(self) -> str:
        """``<service>.<ns>.svc.cluster.local``."""
        return f"{self.service}.{self.namespace}.svc.cluster.local"

    @property
    def cluster_name(self) -> str:
        """Istio's outbound cluster name ``outbound|<port>||<fqdn>``."""
        return f"outbound|{self.port}||{self.fqdn}"

    @property
    def domains(self) -> list[str]:
        """Host names a client may use for this service (with and without the port)."""
        names = [self.service, f"{self.service}.{self.namespace}",
                 f"{self.service}.{self.namespace}.svc", self.fqdn]
        return names + [f"{n}:{self.port}" for n in names]


@dataclass(frozen=True, slots=True)
class TcpInbound:
    """A plain TCP port of the workload behind its sidecar (no HTTP, so no policy filters).

    ``listen`` is the sidecar's inbound port, ``service_port`` the logical port in the
    ``inbound|<port>||`` cluster name, ``app`` where the app serves it.
    """

    listen: int
    service_port: int
    app: Endpoint


@dataclass(frozen=True, slots=True)
class TcpOutbound:
    """A TCP upstream the app reaches on the sidecar's ``listen`` port (one port each)."""

    listen: int
    upstream: Upstream


#: Istio's egress gateway: its service (in the root namespace) and the account it runs as.
EGRESS_GATEWAY_SERVICE = "istio-egressgateway"
EGRESS_GATEWAY_NAMESPACE = "istio-system"
EGRESS_GATEWAY_ACCOUNT = "istio-egressgateway-service-account"


@dataclass(frozen=True, slots=True)
class EgressRoute:
    """External hosts a sidecar sends through the egress gateway, their ``Host`` kept.

    Istio's VirtualService bound to ``mesh`` that routes ``hosts`` to the egress gateway, with
    a DestinationRule ISTIO_MUTUAL to it: ``gateway`` is the gateway as a mesh upstream (see
    :meth:`to`), so the call is mTLS checked against the gateway's SPIFFE id. ``hosts`` are
    Envoy domains (exact, or ``*.suffix``).
    """

    gateway: Upstream
    hosts: tuple[str, ...]

    @classmethod
    def to(cls, address: Endpoint, hosts: tuple[str, ...], *, port: int = 80,
           mtls: bool = True) -> EgressRoute:
        """Route ``hosts`` to Istio's egress gateway at ``address`` (logical ``port``)."""
        return cls(Upstream(EGRESS_GATEWAY_SERVICE, address, EGRESS_GATEWAY_NAMESPACE, port,
                            service_account=EGRESS_GATEWAY_ACCOUNT, mtls=mtls), hosts)


@dataclass(frozen=True, slots=True)
class MeshTls:
    """A proxy's mesh certificate (file SDS from ``cert_dir``) and its inbound mTLS mode.

    ``cert_dir`` is an absolute directory holding what ``mixer ca issue`` writes
    (``default.json``, ``ROOTCA.json``): Envoy watches it, so a rotation needs no restart.
    """

    cert_dir: str
    mode: InboundMode = "STRICT"
    trust_domain: str = DEFAULT_TRUST_DOMAIN


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """Listener addresses and optional features shared by every role."""

    listen_host: str = "127.0.0.1"
    admin: Endpoint = Endpoint("127.0.0.1", 15000)
    #: Rate-limit domain the ratelimit filter sends; descriptors come from that domain.
    ratelimit_domain: str | None = None
    #: ``rate_limits`` entries (each a list of Envoy actions) for the routes.
    rate_limits: tuple[Actions, ...] = ()
    #: OTLP/gRPC collector (e.g. Jaeger) for Envoy tracing; ``None`` disables tracing.
    tracing: Endpoint | None = None
    route_timeout: str = "15s"
    #: Mesh mTLS; ``None``: no certificate, plaintext everywhere (inbound as DISABLE).
    tls: MeshTls | None = None
