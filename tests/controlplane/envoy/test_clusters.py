"""controlplane.envoy.clusters: static/DNS clusters, HTTP/2 for gRPC, the forward proxy."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.clusters.dynamic_forward_proxy.v3.cluster_pb2 import ClusterConfig
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions

from controlplane.envoy.clusters import (
    FORWARD_PROXY_CLUSTER,
    cluster,
    forward_proxy_cluster,
    inbound_cluster,
    service_clusters,
)
from controlplane.envoy.model import Endpoint, MixerServices, Workload

_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _addresses(c: Cluster) -> list[tuple[str, int]]:
    sockets = [e.endpoint.address.socket_address
               for group in c.load_assignment.endpoints for e in group.lb_endpoints]
    return [(s.address, s.port_value) for s in sockets]


def test_ip_endpoints_make_a_static_round_robin_cluster() -> None:
    """IPs give STATIC, no DNS settings, one endpoint per address in the load assignment."""
    c = cluster("inbound|8080||", [Endpoint("127.0.0.1", 8090), Endpoint("127.0.0.2", 8091)])
    assert c.type == Cluster.STATIC and c.lb_policy == Cluster.ROUND_ROBIN
    assert c.dns_lookup_family == Cluster.AUTO
    assert c.connect_timeout.seconds == 1
    assert c.load_assignment.cluster_name == "inbound|8080||"
    assert _addresses(c) == [("127.0.0.1", 8090), ("127.0.0.2", 8091)]
    assert not c.typed_extension_protocol_options


def test_names_make_a_strict_dns_ipv4_cluster() -> None:
    """A DNS name gives STRICT_DNS resolving IPv4 only."""
    c = cluster("backend", [Endpoint("backend-sidecar", 15006)])
    assert c.type == Cluster.STRICT_DNS and c.dns_lookup_family == Cluster.V4_ONLY


def test_grpc_clusters_speak_http2() -> None:
    """http2=True sets explicit HTTP/2 in the upstream HTTP protocol options."""
    c = cluster("mixer_authz", [Endpoint("127.0.0.1", 9191)], http2=True)
    options = HttpProtocolOptions()
    assert c.typed_extension_protocol_options[_HTTP].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_service_clusters_name_our_services_and_the_collector() -> None:
    """Three HTTP/2 service clusters with a short connect timeout, plus tracing when given."""
    services = MixerServices(authz=Endpoint("authz", 9191))
    plain = service_clusters(services)
    assert [c.name for c in plain] == ["mixer_authz", "mixer_ratelimit", "mixer_telemetry"]
    assert all(_HTTP in c.typed_extension_protocol_options for c in plain)
    assert plain[0].connect_timeout.nanos == 250_000_000
    assert _addresses(plain[0]) == [("authz", 9191)]
    traced = service_clusters(services, Endpoint("jaeger", 4317))
    assert traced[-1].name == "mixer_tracing"


def test_forward_proxy_cluster_uses_the_dns_cache() -> None:
    """The egress cluster is Envoy's dynamic forward proxy type with the shared DNS cache."""
    c = forward_proxy_cluster()
    assert c.name == FORWARD_PROXY_CLUSTER and c.lb_policy == Cluster.CLUSTER_PROVIDED
    assert c.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    config = ClusterConfig()
    assert c.cluster_type.typed_config.Unpack(config)
    assert config.dns_cache_config.name == "egress_dns_cache"
    assert config.dns_cache_config.max_hosts.value == 1024


def test_inbound_cluster_names_the_service_it_serves() -> None:
    """inbound|<port>|| to the app, with Istio's istio.services metadata for telemetry."""
    c = inbound_cluster(Workload("reviews", "shop"), 9080, Endpoint("127.0.0.1", 9081))
    assert c.name == "inbound|9080||" and _addresses(c) == [("127.0.0.1", 9081)]
    services = c.metadata.filter_metadata["istio"].fields["services"].list_value.values
    (service,) = [v.struct_value.fields for v in services]
    assert {k: v.string_value for k, v in service.items()} == {
        "host": "reviews.shop.svc.cluster.local", "name": "reviews", "namespace": "shop"}
