"""Istio's label values for one access-log entry.

Given a domain entry and the reporting node's identity, compute the 25 values of Istio's
standard label set (``ISTIO_LABELS``, in Istio's order) the way Istio's in-proxy stats filter
does: the reporter from the upstream cluster's inbound/outbound name, the local side from node
metadata, the peer side from the mTLS SAN and the peer's claims that agree with it (the
peer-metadata header, Istio filter state), and ``unknown``/``latest``/``-``/``""`` exactly
where Istio emits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy_mixer.common.wire import parse_cluster
from telemetry.entries import HttpEntry, TcpEntry, TlsInfo
from telemetry.identity import (
    PEER_METADATA_HEADER,
    UNKNOWN,
    UNKNOWN_WORKLOAD,
    NodeIdentity,
    PeerDirectory,
    WorkloadIdentity,
    decode_peer_header,
    verified_peer,
    with_principal,
    workload_from_peer_state,
)

#: Istio's full label set, verbatim and in Istio's order (istio_stats.cc ``all_tags_``).
ISTIO_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "response_code",
    "grpc_response_status",
)

# Exposition order. Envoy prints a stat's tags in the order the stats filter appended them
# (istio_stats.cc ``populatePeerInfo`` then ``log``/``reportHelper``), which differs from
# ``all_tags_`` above; Prometheus ignores order, but a line-for-line comparison with Istio's
# ``/stats/prometheus`` does not. ISTIO_LABELS stays the order of the 25 computed values.

#: gRPC message counters: reporter plus the 19 source_/destination_ labels, in Istio's order.
MESSAGE_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
)
#: Request metrics (count, duration, sizes): all 25, in Istio's exposition order.
HTTP_LABELS: tuple[str, ...] = (
    *MESSAGE_LABELS,
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
#: TCP metrics: everything but response_code and grpc_response_status, in Istio's order.
TCP_LABELS: tuple[str, ...] = (
    *MESSAGE_LABELS,
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)

#: ALS ``ResponseFlags`` field -> Envoy's short code, in Envoy's order.
RESPONSE_FLAG_CODES: tuple[tuple[str, str], ...] = (
    ("failed_local_healthcheck", "LH"),
    ("no_healthy_upstream", "UH"),
    ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"),
    ("upstream_remote_reset", "UR"),
    ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"),
    ("upstream_overflow", "UO"),
    ("no_route_found", "NR"),
    ("delay_injected", "DI"),
    ("fault_injected", "FI"),
    ("rate_limited", "RL"),
    ("unauthorized_details", "UAEX"),
    ("rate_limit_service_error", "RLSE"),
    ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"),
    ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"),
    ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"),
    ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"),
    ("duration_timeout", "DT"),
    ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"),
    ("overload_manager", "OM"),
    ("dns_resolution_failure", "DF"),
    ("downstream_remote_reset", "DR"),
)
_FLAG_ORDER = {name: i for i, (name, _) in enumerate(RESPONSE_FLAG_CODES)}
_FLAG_CODE = dict(RESPONSE_FLAG_CODES)


def short_flags(set_fields: list[str]) -> str:
    """Envoy's ``%RESPONSE_FLAGS%`` for the set flag fields: codes in Envoy's order, or ``-``."""
    if not set_fields:
        return "-"
    known = sorted((f for f in set_fields if f in _FLAG_CODE), key=_FLAG_ORDER.__getitem__)
    return ",".join(_FLAG_CODE[f] for f in known) or "-"


# HTTP status -> gRPC status when a gRPC response carries no grpc-status (Envoy's mapping).
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}

REPORTER_SOURCE = "source"
REPORTER_DESTINATION = "destination"
REPORTER_WAYPOINT = "waypoint"


def reporter_of(cluster: str, route_name: str, node: NodeIdentity) -> str:
    """``destination`` for Istio's ``inbound|…`` clusters, ``source`` for ``outbound|…``.

    Entries without a cluster (direct responses, no route) fall back to the route name in the
    same form, then the logger's ``log_name`` (``inbound``/``outbound`` in it), then the node
    kind (gateways report as ``source``, waypoints as ``waypoint``, sidecars as ``destination``).
    """
    for name in (cluster, route_name):
        if name.startswith("inbound|"):
            return REPORTER_DESTINATION
        if name.startswith("outbound|"):
            return REPORTER_SOURCE
    log_name = node.log_name
    if "outbound" in log_name:
        return REPORTER_SOURCE
    if "inbound" in log_name:
        return REPORTER_DESTINATION
    if node.node_type == "router":
        return REPORTER_SOURCE
    if node.node_type == "waypoint":
        return REPORTER_WAYPOINT
    return REPORTER_DESTINATION


def cluster_service(cluster: str) -> str:
    """The service host of ``outbound|port|subset|host`` (or ``inbound|port|subset|host``)."""
    name = parse_cluster(cluster)
    return name.host if name is not None else ""


#: Istio's catch-all clusters and routes: their name is the destination_service_name.
_SPECIAL_CLUSTERS = frozenset({
    "BlackHoleCluster", "PassthroughCluster",
    "InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv6",
})
_SPECIAL_ROUTES = {"block_all": "BlackHoleCluster", "allow_any": "PassthroughCluster"}


def service_of(
    cluster: str, route_name: str, service_host: str, service_name: str, authority: str,
) -> tuple[str, str]:
    """``(destination_service, destination_service_name)`` as Istio's stats filter picks them.

    The Host/``:authority`` header, verbatim (port included), is the fallback for both
    (``authority`` is ``""`` when the fallback is off or for TCP). The cluster's service wins
    over it: its metadata (``service_host``/``service_name``, Istio's ``istio.services[0]``), or
    the host in our ``outbound|port||host`` cluster names; the name defaults to the host's first
    DNS label. The catch-all clusters/routes name themselves. ``""`` where nothing applies.
    """
    host = name = authority
    special = _SPECIAL_ROUTES.get(route_name) or (cluster if cluster in _SPECIAL_CLUSTERS else "")
    if special:
        return host, special
    service_host = service_host or cluster_service(cluster)
    if service_host:
        return service_host, service_name or service_host.split(".", 1)[0]
    return host, name


@dataclass(frozen=True, slots=True)
class LabelOptions:
    """Knobs of the label computation."""

    #: Use the Host/:authority header as destination_service when the cluster names no service
    #: (Istio's default; the top source of destination_service cardinality, so it can be off).
    host_header_fallback: bool = True


def _claim(
    headers: Mapping[str, str], state: Mapping[str, object] | None
) -> WorkloadIdentity | None:
    """What the peer says it is (filter state, else the peer-metadata header), or None."""
    if state:
        return workload_from_peer_state(state)
    value = headers.get(PEER_METADATA_HEADER)
    return decode_peer_header(value) if value else None


def _side(w: WorkloadIdentity) -> tuple[str, ...]:
    return (w.workload, w.namespace, w.principal, w.app, w.version)


def _values(
    reporter: str,
    src: WorkloadIdentity,
    dst: WorkloadIdentity,
    service: tuple[str, str],
    protocol: str,
    flags: str,
    policy: str,
    code: str,
    grpc_status: str,
) -> tuple[str, ...]:
    host, name = service
    if reporter == REPORTER_SOURCE:
        # Client side: the peer's namespace (SAN, then peer metadata), never the host's.
        host, name, namespace = host or UNKNOWN, name or UNKNOWN, dst.namespace
    else:
        # Server side: the local workload stands in for a service nobody named.
        host = host or dst.canonical_service
        name = name or dst.canonical_service
        namespace = dst.namespace
    return (
        reporter,
        *_side(src), src.canonical_service, src.canonical_revision, src.cluster,
        *_side(dst),
        host, name, namespace or UNKNOWN,
        dst.canonical_service, dst.canonical_revision, dst.cluster,
        protocol, flags, policy, code, grpc_status,
    )


def _sides(
    reporter: str,
    node: NodeIdentity,
    claim: WorkloadIdentity | None,
    tls: TlsInfo | None,
    upstream_tls: TlsInfo | None,
    peers: PeerDirectory | None,
) -> tuple[WorkloadIdentity, WorkloadIdentity, str]:
    local = node.workload
    if reporter == REPORTER_DESTINATION:
        # Server side: Envoy logs the downstream TLS, so both SANs are known under mTLS. Anyone
        # can send a peer-metadata header straight to a sidecar, so an inbound claim counts
        # only under a verified certificate, and only where it agrees with it: never on
        # plaintext, whatever strips or does not strip the header before us.
        peer_uri = tls.peer_uri if tls else ""
        local_uri = tls.local_uri if tls else ""
        policy = "mutual_tls" if peer_uri and local_uri else "none"
        peer = verified_peer(claim, peer_uri, peers) if peer_uri else UNKNOWN_WORKLOAD
        return peer, with_principal(local, local_uri), policy
    # Client side: the upstream certificate (from the upstream SAN custom tags) names the
    # destination, and the response's claim is believed where it agrees with it. Without the
    # tags nothing says how the upstream was secured: the claim is taken as it comes (the
    # client picked that upstream) and the policy is Istio's client-side "unknown".
    peer_uri = upstream_tls.peer_uri if upstream_tls else ""
    local_uri = upstream_tls.local_uri if upstream_tls else ""
    if not peer_uri:
        return local, claim or UNKNOWN_WORKLOAD, "unknown"
    policy = "mutual_tls" if local_uri else "unknown"
    peer = verified_peer(claim, peer_uri, peers, inbound=False)
    return with_principal(local, local_uri), peer, policy


def http_label_values(
    entry: HttpEntry, node: NodeIdentity, options: LabelOptions = LabelOptions(),
    peers: PeerDirectory | None = None,
) -> tuple[str, ...]:
    """The 25 Istio label values (``ISTIO_LABELS`` order) of an HTTP/gRPC entry.

    ``peers`` names the workload behind a peer certificate when no believable claim does.
    """
    reporter = reporter_of(entry.upstream_cluster, entry.route_name, node)
    inbound = reporter == REPORTER_DESTINATION
    claim = _claim(entry.request_headers if inbound else entry.response_headers,
                   entry.peer_state)
    src, dst, policy = _sides(reporter, node, claim, entry.tls, entry.upstream_tls, peers)
    service = service_of(
        entry.upstream_cluster, entry.route_name, entry.service_host, entry.service_name,
        entry.authority if options.host_header_fallback else "")
    content_type = entry.request_headers.get("content-type", "")
    grpc = content_type.startswith("application/grpc")
    grpc_status = ""
    if grpc:
        grpc_status = (
            entry.response_trailers.get("grpc-status")
            or entry.response_headers.get("grpc-status")
            or ""
        )
        if not grpc_status and entry.response_code not in (0, 200):
            grpc_status = str(_HTTP_TO_GRPC.get(entry.response_code, 2))
    return _values(
        reporter, src, dst, service, "grpc" if grpc else "http",
        entry.response_flags, policy, str(entry.response_code), grpc_status,
    )


def tcp_label_values(
    entry: TcpEntry, node: NodeIdentity, options: LabelOptions = LabelOptions(),
    peers: PeerDirectory | None = None,
) -> tuple[str, ...]:
    """The 25 label values of a TCP entry (the last two, absent on TCP metrics, are ``""``).

    TCP has no metadata exchange: under mTLS the certificate (through ``peers``) names the
    peer's workload, which is what Istio's TCP dashboards need.
    """
    reporter = reporter_of(entry.upstream_cluster, entry.route_name, node)
    claim = workload_from_peer_state(entry.peer_state) if entry.peer_state else None
    src, dst, policy = _sides(reporter, node, claim, entry.tls, entry.upstream_tls, peers)
    service = service_of(
        entry.upstream_cluster, entry.route_name, entry.service_host, entry.service_name, "")
    return _values(
        reporter, src, dst, service, "tcp", entry.response_flags, policy, "", "",
    )
