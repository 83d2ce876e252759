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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.envoy.ratelimit_actions import Actions

# The wire contract (peer headers, metadata namespaces, the physical-peer header) is defined
# once in envoy_mixer.common.wire and shared with the services that read it; re-exported here
# for the builders.
from envoy_mixer.common.wire import AUTHZ_METADATA_NAMESPACE as AUTHZ_METADATA_NAMESPACE
from envoy_mixer.common.wire import DIRECT_PEER_HEADER as DIRECT_PEER_HEADER
from envoy_mixer.common.wire import DIRECT_REMOTE_IP_KEY as DIRECT_REMOTE_IP_KEY
from envoy_mixer.common.wire import PEER_METADATA_HEADER as PEER_METADATA_HEADER
from envoy_mixer.common.wire import PEER_METADATA_ID_HEADER as PEER_METADATA_ID_HEADER
from envoy_mixer.common.wire import PEER_STASH_NAMESPACE as PEER_STASH_NAMESPACE

#: Cluster names of our three services inside every generated config.
AUTHZ_CLUSTER = "mixer_authz"
RATELIMIT_CLUSTER = "mixer_ratelimit"
TELEMETRY_CLUSTER = "mixer_telemetry"
TRACING_CLUSTER = "mixer_tracing"


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
