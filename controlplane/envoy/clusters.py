"""Clusters: the app behind a sidecar, the upstreams it routes to, our three services.

Endpoints given as IPs make a STATIC cluster, names a STRICT_DNS one (IPv4 only, as the
containers have no IPv6 route). Every cluster of a gRPC service speaks HTTP/2.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint
from envoy.extensions.clusters.dynamic_forward_proxy.v3.cluster_pb2 import ClusterConfig
from envoy.extensions.common.dynamic_forward_proxy.v3.dns_cache_pb2 import DnsCacheConfig
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

from controlplane.envoy.core import duration, pack, socket_address
from controlplane.envoy.model import (
    AUTHZ_CLUSTER,
    RATELIMIT_CLUSTER,
    TELEMETRY_CLUSTER,
    TRACING_CLUSTER,
    Endpoint,
    MixerServices,
    Workload,
)

#: Name of the egress gateway's dynamic forward proxy cluster (and its route's target).
FORWARD_PROXY_CLUSTER = "egress_dynamic_forward_proxy"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: How quickly a call-out to one of our services gives up connecting.
_SERVICE_CONNECT_TIMEOUT = "0.25s"


def cluster(name: str, endpoints: Sequence[Endpoint], *, http2: bool = False,
            connect_timeout: str = "1s") -> Cluster:
    """A round-robin cluster over ``endpoints``; STATIC for IPs, STRICT_DNS for names."""
    static = all(e.is_ip for e in endpoints)
    out = Cluster(
        name=name,
        type=Cluster.STATIC if static else Cluster.STRICT_DNS,
        connect_timeout=duration(connect_timeout),
        lb_policy=Cluster.ROUND_ROBIN,
    )
    if not static:
        out.dns_lookup_family = Cluster.V4_ONLY
    if http2:
        # gRPC needs HTTP/2; without this every call-out fails (and ext_authz then denies all).
        options = HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(options))
    out.load_assignment.cluster_name = name
    out.load_assignment.endpoints.add().lb_endpoints.extend(
        LbEndpoint(endpoint={"address": socket_address(e.host, e.port)}) for e in endpoints
    )
    return out


def inbound_cluster(workload: Workload, service_port: int, app: Endpoint) -> Cluster:
    """A sidecar's ``inbound|<port>||`` cluster to its app, with Istio's ``istio.services``.

    The metadata names the service this workload serves on the port, which the access log
    carries to telemetry as ``destination_service``.
    """
    out = cluster(f"inbound|{service_port}||", [app])
    fqdn = f"{workload.name}.{workload.namespace}.svc.cluster.local"
    out.metadata.filter_metadata["istio"].update({"services": [
        {"host": fqdn, "name": workload.name, "namespace": workload.namespace}]})
    return out


def service_clusters(services: MixerServices, tracing: Endpoint | None = None) -> list[Cluster]:
    """The HTTP/2 clusters of our three services (and of the tracing collector, if any)."""
    targets = [(AUTHZ_CLUSTER, services.authz), (RATELIMIT_CLUSTER, services.ratelimit),
               (TELEMETRY_CLUSTER, services.telemetry)]
    if tracing is not None:
        targets.append((TRACING_CLUSTER, tracing))
    return [cluster(name, [endpoint], http2=True, connect_timeout=_SERVICE_CONNECT_TIMEOUT)
            for name, endpoint in targets]


def egress_dns_cache() -> DnsCacheConfig:
    """The DNS cache shared by the forward-proxy filter and cluster (they must name the same)."""
    return DnsCacheConfig(
        name="egress_dns_cache",
        dns_lookup_family=Cluster.V4_ONLY,
        host_ttl=duration("300s"),
        max_hosts={"value": 1024},
    )


def forward_proxy_cluster() -> Cluster:
    """The egress gateway's dynamic forward proxy: the upstream is whatever ``Host`` names."""
    out = Cluster(
        name=FORWARD_PROXY_CLUSTER,
        connect_timeout=duration("2s"),
        lb_policy=Cluster.CLUSTER_PROVIDED,
    )
    out.cluster_type.name = "envoy.clusters.dynamic_forward_proxy"
    out.cluster_type.typed_config.CopyFrom(pack(ClusterConfig(dns_cache_config=egress_dns_cache())))
    return out
