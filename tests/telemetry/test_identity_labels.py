"""Identity parsing and Istio label values (pure functions)."""

from __future__ import annotations

import base64

from telemetry.entries import HttpEntry, TcpEntry, TcpEvent, TlsInfo
from telemetry.identity import (
    UNKNOWN_NODE,
    NodeIdentity,
    decode_peer_header,
    node_identity,
    parse_node_id,
    spiffe_namespace,
)
from telemetry.labels import (
    ISTIO_LABELS,
    LabelOptions,
    http_label_values,
    reporter_of,
    service_of,
    short_flags,
    tcp_label_values,
)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(ISTIO_LABELS, values, strict=True))


def test_node_id_parts() -> None:
    """Istio's node id gives type, pod and namespace; anything else gives blanks."""
    assert parse_node_id("sidecar~10.1.2.3~productpage-v1-abc.default~default.svc.cluster.local"
                         ) == ("sidecar", "productpage-v1-abc", "default")
    assert parse_node_id("router~1.1.1.1~gw-1.istio-system~istio-system.svc.cluster.local"
                         )[0] == "router"
    assert parse_node_id("plain-node") == ("", "", "")


def test_node_identity_defaults_canonical_labels(frontend: NodeIdentity) -> None:
    """Canonical name/revision from labels; missing ones fall back to app/version, latest."""
    w = frontend.workload
    assert (w.workload, w.namespace, w.app, w.version, w.cluster) == (
        "frontend", "shop", "frontend", "v1", "Kubernetes")
    bare = node_identity("sidecar~1.1.1.1~x-1.ns~ns.svc.cluster.local", {})
    assert (bare.workload.workload, bare.workload.namespace) == ("unknown", "ns")
    assert bare.workload.canonical_revision == "latest"
    assert bare.workload.canonical_service == "unknown"


def test_service_account_gives_local_principal() -> None:
    """SERVICE_ACCOUNT in node metadata becomes the SPIFFE principal Istio would use."""
    node = node_identity("", {"NAMESPACE": "shop", "SERVICE_ACCOUNT": "web"})
    assert node.workload.principal == "spiffe://cluster.local/ns/shop/sa/web"


def test_peer_header_round_trip_and_garbage(frontend_header: str) -> None:
    """A valid header decodes (std or URL-safe base64); garbage decodes to None."""
    peer = decode_peer_header(frontend_header)
    assert peer is not None and (peer.workload, peer.namespace) == ("frontend", "shop")
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(frontend_header)).decode().rstrip("=")
    assert decode_peer_header(urlsafe) == peer
    assert decode_peer_header("not base64!") is None
    assert decode_peer_header(base64.b64encode(b"[1,2]").decode()) is None


def test_spiffe_namespace() -> None:
    """The namespace is read from /ns/<ns>/ of a SPIFFE id."""
    assert spiffe_namespace("spiffe://cluster.local/ns/shop/sa/web") == "shop"
    assert spiffe_namespace("https://example.com") == ""


def test_reporter_from_cluster_names_and_fallbacks() -> None:
    """inbound| -> destination, outbound| -> source; then route, log name, node type."""
    assert reporter_of("inbound|8080||", "", UNKNOWN_NODE) == "destination"
    assert reporter_of("outbound|80||a.b.svc.cluster.local", "", UNKNOWN_NODE) == "source"
    assert reporter_of("", "outbound|80||x", UNKNOWN_NODE) == "source"
    assert reporter_of("", "", NodeIdentity(log_name="outbound_tcp")) == "source"
    assert reporter_of("", "", NodeIdentity(node_type="router")) == "source"
    assert reporter_of("", "", NodeIdentity(node_type="waypoint")) == "waypoint"
    assert reporter_of("", "", UNKNOWN_NODE) == "destination"


def test_short_flags_in_envoy_order() -> None:
    """Flags map to Envoy's short codes in Envoy's order; none gives '-'."""
    assert short_flags([]) == "-"
    assert short_flags(["upstream_retry_limit_exceeded", "upstream_connection_failure"]
                       ) == "UF,URX"
    assert short_flags(["unauthorized_details"]) == "UAEX"
    assert short_flags(["rate_limited"]) == "RL"


def test_service_of_keeps_the_host_header_verbatim() -> None:
    """The Host fallback is the header as sent, port included, for service and name alike."""
    assert service_of("inbound|8080||", "", "", "", "127.0.0.1:18080") == (
        "127.0.0.1:18080", "127.0.0.1:18080")
    assert service_of("inbound|8080||", "", "", "", "Backend.shop:8080") == (
        "Backend.shop:8080", "Backend.shop:8080")
    assert service_of("inbound|8080||", "", "", "", "") == ("", "")


def test_service_of_prefers_the_cluster_service() -> None:
    """Cluster metadata, then the outbound cluster name, win over Host; name = first label."""
    assert service_of("inbound|9000||", "", "db.shop.svc.cluster.local", "", "x:1") == (
        "db.shop.svc.cluster.local", "db")
    assert service_of("inbound|9000||", "", "db.shop.svc.cluster.local", "database", "") == (
        "db.shop.svc.cluster.local", "database")
    assert service_of("outbound|80||web.shop.svc.cluster.local", "", "", "", "x:1") == (
        "web.shop.svc.cluster.local", "web")


def test_service_of_catch_all_clusters_name_themselves() -> None:
    """Istio's BlackHole/Passthrough clusters and routes are the service name; Host stays."""
    assert service_of("PassthroughCluster", "", "", "", "api.example.com") == (
        "api.example.com", "PassthroughCluster")
    assert service_of("", "block_all", "", "", "") == ("", "BlackHoleCluster")
    assert service_of("InboundPassthroughClusterIpv4", "", "", "", "") == (
        "", "InboundPassthroughClusterIpv4")


def test_server_side_labels_with_peer_header_and_mtls(
    backend: NodeIdentity, frontend_header: str
) -> None:
    """reporter=destination: a header naming another namespace than the SAN is not believed."""
    entry = HttpEntry(
        upstream_cluster="inbound|8080||", authority="backend.shop.svc.cluster.local:8080",
        service_host="backend.shop.svc.cluster.local", response_code=200,
        request_headers={"x-mixer-peer-metadata": frontend_header,
                         "content-type": "application/grpc"},
        response_trailers={"grpc-status": "5"},
        tls=TlsInfo(peer_uri="spiffe://cluster.local/ns/other/sa/frontend",
                    local_uri="spiffe://cluster.local/ns/shop/sa/backend"),
    )
    labels = _labels(http_label_values(entry, backend))
    assert labels["reporter"] == "destination"
    # The certificate alone names the peer: its namespace, its account as the workload.
    assert (labels["source_workload"], labels["source_app"]) == ("frontend", "unknown")
    assert labels["source_workload_namespace"] == "other"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/other/sa/frontend"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/shop/sa/backend"
    assert labels["destination_workload"] == "backend"
    assert labels["destination_canonical_revision"] == "v2"
    assert labels["destination_service"] == "backend.shop.svc.cluster.local"
    assert labels["destination_service_name"] == "backend"
    assert labels["destination_service_namespace"] == "shop"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert (labels["request_protocol"], labels["grpc_response_status"]) == ("grpc", "5")


def test_client_side_labels_unknown_peer(frontend: NodeIdentity) -> None:
    """reporter=source without a peer header: destination_* (service namespace too) unknown."""
    entry = HttpEntry(upstream_cluster="outbound|8080||backend.shop.svc.cluster.local",
                      authority="ignored:80", response_code=0, response_flags="UF,URX")
    labels = _labels(http_label_values(entry, frontend))
    assert labels["reporter"] == "source"
    assert labels["source_workload"] == "frontend"
    assert labels["destination_workload"] == "unknown"
    assert labels["destination_canonical_revision"] == "latest"
    assert labels["destination_service"] == "backend.shop.svc.cluster.local"
    assert labels["destination_service_namespace"] == "unknown"  # the peer's, as in Istio
    assert labels["connection_security_policy"] == "unknown"
    assert (labels["response_code"], labels["response_flags"]) == ("0", "UF,URX")
    assert (labels["request_protocol"], labels["grpc_response_status"]) == ("http", "")


def test_grpc_status_falls_back_to_http_mapping(frontend: NodeIdentity) -> None:
    """A gRPC response without grpc-status maps the HTTP status as Envoy does (503 -> 14)."""
    entry = HttpEntry(upstream_cluster="outbound|9090||b.s.svc.cluster.local",
                      response_code=503, request_headers={"content-type": "application/grpc"})
    assert _labels(http_label_values(entry, frontend))["grpc_response_status"] == "14"


def test_peer_filter_state_is_used(frontend: NodeIdentity) -> None:
    """Istio ≥1.24 peer filter state gives the peer identity when present."""
    entry = HttpEntry(upstream_cluster="outbound|80||x.y.svc.cluster.local",
                      peer_state={"workload": "x-v1", "namespace": "y", "service": "x",
                                  "revision": "v1", "app": "x", "version": "v1"})
    labels = _labels(http_label_values(entry, frontend))
    assert (labels["destination_workload"], labels["destination_canonical_service"]) == (
        "x-v1", "x")


def test_host_header_fallback_can_be_off(backend: NodeIdentity) -> None:
    """Fallback off: a server-side entry naming no service reports the local canonical name."""
    entry = HttpEntry(upstream_cluster="inbound|8080||", authority="evil-1234.example:80")
    on = _labels(http_label_values(entry, backend))
    off = _labels(http_label_values(entry, backend, LabelOptions(host_header_fallback=False)))
    assert (on["destination_service"], on["destination_service_name"]) == (
        "evil-1234.example:80", "evil-1234.example:80")
    assert (off["destination_service"], off["destination_service_name"]) == (
        "backend", "backend")


def test_client_side_host_fallback_and_peer_namespace(
    frontend: NodeIdentity, backend_header: str
) -> None:
    """Client side: Host verbatim when the cluster names no service; namespace from the peer."""
    entry = HttpEntry(upstream_cluster="PassthroughCluster", authority="api.example.com:443",
                      response_headers={"x-mixer-peer-metadata": backend_header})
    labels = _labels(http_label_values(entry, frontend))
    assert (labels["destination_service"], labels["destination_service_name"],
            labels["destination_service_namespace"]) == (
        "api.example.com:443", "PassthroughCluster", "shop")
    bare = _labels(http_label_values(HttpEntry(upstream_cluster="outbound|80||"), frontend))
    assert (bare["destination_service"], bare["destination_service_name"],
            bare["destination_service_namespace"]) == ("unknown", "unknown", "unknown")


def test_inbound_tcp_service_from_cluster_metadata(backend: NodeIdentity) -> None:
    """Inbound TCP: destination_service from the inbound cluster's service, ns the local one."""
    entry = TcpEntry(event=TcpEvent.CLOSE, upstream_cluster="inbound|9000||",
                     service_host="backend.shop.svc.cluster.local", service_name="backend")
    labels = _labels(tcp_label_values(entry, backend))
    assert (labels["reporter"], labels["destination_service"],
            labels["destination_service_name"], labels["destination_service_namespace"]) == (
        "destination", "backend.shop.svc.cluster.local", "backend", "shop")
    bare = _labels(tcp_label_values(
        TcpEntry(event=TcpEvent.CLOSE, upstream_cluster="inbound|9000||"), backend))
    assert (bare["destination_service"], bare["destination_service_name"]) == (
        "backend", "backend")


def test_outbound_tcp_to_unknown_peer_has_unknown_service_namespace(
    frontend: NodeIdentity,
) -> None:
    """A client TCP connection to an unknown peer: destination_service_namespace unknown."""
    entry = TcpEntry(event=TcpEvent.CLOSE,
                     upstream_cluster="outbound|9000||backend.default.svc.cluster.local")
    labels = _labels(tcp_label_values(entry, frontend))
    assert (labels["destination_service"], labels["destination_service_namespace"]) == (
        "backend.default.svc.cluster.local", "unknown")


def test_tcp_labels(frontend: NodeIdentity) -> None:
    """TCP: protocol tcp, and empty response_code/grpc status (not rendered on TCP metrics)."""
    entry = TcpEntry(event=TcpEvent.CLOSE,
                     upstream_cluster="outbound|5432||db.shop.svc.cluster.local")
    labels = _labels(tcp_label_values(entry, frontend))
    assert labels["request_protocol"] == "tcp"
    assert labels["destination_service_name"] == "db"
    assert (labels["response_code"], labels["grpc_response_status"]) == ("", "")
