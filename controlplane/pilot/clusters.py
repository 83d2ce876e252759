"""Outbound clusters ``outbound|PORT|SUBSET|HOST`` with the DestinationRule's traffic policy.

A service whose endpoints are IPs (STATIC, or NONE with endpoints) gets an EDS cluster (its
endpoints come from :mod:`.endpoints`); a DNS service a STRICT_DNS (DNS) or LOGICAL_DNS
(DNS_ROUND_ROBIN) cluster over its endpoints, or over its own host when it lists none.
A subset's policy replaces the rule's policy field by field (Istio's MergeTrafficPolicy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection
from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint
from google.protobuf.duration_pb2 import Duration

from controlplane.envoy.core import socket_address
from controlplane.mesh.model import (
    ClientTLS,
    Endpoint,
    Mesh,
    Port,
    Service,
    Subset,
    TrafficPolicy,
)
from controlplane.pilot.tls import ads_source, upstream_tls

__all__ = ["ClusterRef", "cluster_name", "outbound_cluster", "subset_endpoints"]

_LB = {
    "ROUND_ROBIN": Cluster.ROUND_ROBIN, "LEAST_REQUEST": Cluster.LEAST_REQUEST,
    "LEAST_CONN": Cluster.LEAST_REQUEST, "RANDOM": Cluster.RANDOM,
    "UNSPECIFIED": Cluster.ROUND_ROBIN, "PASSTHROUGH": Cluster.ROUND_ROBIN,
}
#: Istio's default connect timeout.
DEFAULT_CONNECT_TIMEOUT = 10.0


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's ``outbound|PORT|SUBSET|HOST``."""
    return f"outbound|{port}|{subset}|{host}"


@dataclass(frozen=True, slots=True)
class ClusterRef:
    """One outbound cluster to build: a service port and optionally a subset."""

    service: Service
    port: Port
    subset: str = ""

    @property
    def name(self) -> str:
        """The cluster name."""
        return cluster_name(self.port.number, self.subset, self.service.host)

    @property
    def eds(self) -> bool:
        """True when the endpoints are served over EDS (IP endpoints)."""
        return self.service.resolution in ("STATIC", "NONE")


def merged_policy(mesh: Mesh, ref: ClusterRef) -> tuple[TrafficPolicy | None, Subset | None]:
    """The policy that applies to ``ref`` (the subset's fields over the rule's) and its subset."""
    rule = mesh.destination_rule_for(ref.service.host)
    if rule is None:
        return None, None
    subset = rule.subset(ref.subset) if ref.subset else None
    policy = rule.traffic_policy
    if subset is not None and subset.traffic_policy is not None:
        own = subset.traffic_policy
        base = policy or TrafficPolicy()
        policy = replace(
            base,
            load_balancer=own.load_balancer or base.load_balancer,
            connection_pool=own.connection_pool or base.connection_pool,
            outlier_detection=own.outlier_detection or base.outlier_detection,
            tls=own.tls or base.tls,
        )
    return policy, subset


def subset_endpoints(mesh: Mesh, ref: ClusterRef) -> tuple[Endpoint, ...]:
    """The service's endpoints, narrowed to the subset's when ``ref`` names one."""
    _, subset = merged_policy(mesh, ref)
    if ref.subset and subset is None:
        return ()
    return subset.endpoints if subset is not None else ref.service.endpoints


def _seconds(value: float) -> dict[str, int]:
    whole = int(value)
    return {"seconds": whole, "nanos": round((value - whole) * 1e9)}


def _apply_policy(out: Cluster, policy: TrafficPolicy, ref: ClusterRef, sans: list[str]) -> None:
    lb = policy.load_balancer
    if lb is not None:
        if lb.simple:
            out.lb_policy = _LB.get(lb.simple, Cluster.ROUND_ROBIN)
        elif lb.consistent_hash is not None:
            if lb.consistent_hash.maglev is not None:
                out.lb_policy = Cluster.MAGLEV
                if lb.consistent_hash.maglev.table_size:
                    out.maglev_lb_config.table_size.value = lb.consistent_hash.maglev.table_size
            else:
                out.lb_policy = Cluster.RING_HASH
                ring = lb.consistent_hash.ring_hash
                if ring is not None and ring.minimum_ring_size:
                    out.ring_hash_lb_config.minimum_ring_size.value = ring.minimum_ring_size
    pool = policy.connection_pool
    if pool is not None:
        limits = CircuitBreakers.Thresholds()
        if pool.tcp is not None:
            if pool.tcp.max_connections:
                limits.max_connections.value = pool.tcp.max_connections
            if pool.tcp.connect_timeout is not None:
                out.connect_timeout.CopyFrom(_duration(pool.tcp.connect_timeout))
        if pool.http is not None:
            if pool.http.http1_max_pending_requests:
                limits.max_pending_requests.value = pool.http.http1_max_pending_requests
            if pool.http.http2_max_requests:
                limits.max_requests.value = pool.http.http2_max_requests
            if pool.http.max_retries:
                limits.max_retries.value = pool.http.max_retries
        out.circuit_breakers.thresholds.append(limits)
    od = policy.outlier_detection
    if od is not None:
        detection = OutlierDetection()
        if od.consecutive_5xx_errors is not None:
            detection.consecutive_5xx.value = od.consecutive_5xx_errors
        if od.consecutive_gateway_errors is not None:
            detection.consecutive_gateway_failure.value = od.consecutive_gateway_errors
            detection.enforcing_consecutive_gateway_failure.value = 100
        if od.interval is not None:
            detection.interval.CopyFrom(_duration(od.interval))
        if od.base_ejection_time is not None:
            detection.base_ejection_time.CopyFrom(_duration(od.base_ejection_time))
        if od.max_ejection_percent:
            detection.max_ejection_percent.value = od.max_ejection_percent
        out.outlier_detection.CopyFrom(detection)
        if od.min_health_percent:
            out.common_lb_config.healthy_panic_threshold.value = od.min_health_percent
    if policy.tls is not None:
        subset = ref.subset
        sni = f"outbound_.{ref.port.number}_.{subset}_.{ref.service.host}"
        socket = upstream_tls(policy.tls, sni=sni, sans=sans)
        if socket is not None:
            out.transport_socket.CopyFrom(socket)


def _duration(seconds: float) -> Duration:
    return Duration(**_seconds(seconds))


def outbound_cluster(mesh: Mesh, ref: ClusterRef, trust_domain: str, *,
                     auto_mtls: bool = False) -> Cluster:
    """The cluster for ``ref`` with its policy; EDS for IP endpoints, DNS otherwise.

    ``auto_mtls`` (the control plane has the mesh CA): ISTIO_MUTUAL to in-mesh workloads
    unless the DestinationRule sets ``tls``.
    """
    out = Cluster(name=ref.name, lb_policy=Cluster.ROUND_ROBIN)
    out.connect_timeout.CopyFrom(_duration(DEFAULT_CONNECT_TIMEOUT))
    if ref.eds:
        out.type = Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(ads_source())
    else:
        out.type = (Cluster.LOGICAL_DNS if ref.service.resolution == "DNS_ROUND_ROBIN"
                    else Cluster.STRICT_DNS)
        out.dns_lookup_family = Cluster.V4_ONLY
        out.load_assignment.cluster_name = ref.name
        endpoints = subset_endpoints(mesh, ref)
        targets = ([(e.address, e.port_for(ref.port)) for e in endpoints]
                   or [(ref.service.host, ref.port.target_port or ref.port.number)])
        out.load_assignment.endpoints.add().lb_endpoints.extend(
            LbEndpoint(endpoint={"address": socket_address(h, p)}) for h, p in targets)
    policy, _ = merged_policy(mesh, ref)
    if auto_mtls and (policy is None or policy.tls is None) and _in_mesh(mesh, ref):
        # Istio's auto mTLS: a rule that says nothing about TLS to a workload with a sidecar
        # gets ISTIO_MUTUAL (the server may be STRICT).
        policy = replace(policy or TrafficPolicy(), tls=ClientTLS(mode="ISTIO_MUTUAL"))
    if policy is not None:
        sans = sorted({f"spiffe://{trust_domain}/ns/{ref.service.namespace}/sa/"
                       f"{e.service_account or 'default'}"
                       for e in subset_endpoints(mesh, ref)})
        _apply_policy(out, policy, ref, list(ref.service.subject_alt_names) or sans)
    return out


def _in_mesh(mesh: Mesh, ref: ClusterRef) -> bool:
    """True when every endpoint is a WorkloadEntry with a proxy of the mesh."""
    endpoints = subset_endpoints(mesh, ref)
    return (ref.service.location == "MESH_INTERNAL" and bool(endpoints)
            and all(e.workload is not None for e in endpoints))
