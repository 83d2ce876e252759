"""mTLS identities: principals, security policy, which peer claims are believed, TCP opens."""

from __future__ import annotations

from pathlib import Path

from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import CollectorRegistry

from telemetry.config import load_config
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent, TlsInfo
from telemetry.identity import (
    NodeIdentity,
    PeerDirectory,
    encode_peer_header,
    node_identity,
)
from telemetry.labels import ISTIO_LABELS, TCP_LABELS, http_label_values, tcp_label_values
from telemetry.recorder import Recorder
from telemetry.server import http_entry, tcp_entry

FRONTEND_SAN = "spiffe://cluster.local/ns/shop/sa/frontend"
BACKEND_SAN = "spiffe://cluster.local/ns/shop/sa/backend"
INBOUND_MTLS = TlsInfo(peer_uri=FRONTEND_SAN, local_uri=BACKEND_SAN)
OUTBOUND_MTLS = TlsInfo(peer_uri=BACKEND_SAN, local_uri=FRONTEND_SAN)
OUT = "outbound|8080||backend.shop.svc.cluster.local"
OUT_TCP = "outbound|9000||backend.shop.svc.cluster.local"
FORGED = encode_peer_header({"NAMESPACE": "kube-system", "WORKLOAD_NAME": "admin",
                             "LABELS": {"app": "admin"}})


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(ISTIO_LABELS, values, strict=True))


def _source(labels: dict[str, str]) -> tuple[str, str, str]:
    return (labels["source_workload"], labels["source_workload_namespace"],
            labels["source_principal"])


def test_plaintext_inbound_ignores_peer_headers(backend: NodeIdentity) -> None:
    """Without a verified certificate an inbound peer-metadata header changes no label."""
    forged = HttpEntry(upstream_cluster="inbound|8080||", request_headers={
        "x-mixer-peer-metadata": FORGED})
    plain = HttpEntry(upstream_cluster="inbound|8080||")
    assert http_label_values(forged, backend) == http_label_values(plain, backend)
    labels = _labels(http_label_values(forged, backend))
    assert _source(labels) == ("unknown", "unknown", "unknown")
    assert labels["connection_security_policy"] == "none"


def test_inbound_header_agreeing_with_the_certificate_is_believed(
    backend: NodeIdentity, frontend_header: str,
) -> None:
    """Under mTLS a header naming the certificate's namespace gives the peer's labels."""
    entry = HttpEntry(upstream_cluster="inbound|8080||", tls=INBOUND_MTLS,
                      request_headers={"x-mixer-peer-metadata": frontend_header})
    labels = _labels(http_label_values(entry, backend))
    assert _source(labels) == ("frontend", "shop", FRONTEND_SAN)
    assert (labels["source_app"], labels["source_version"]) == ("frontend", "v1")
    assert labels["destination_principal"] == BACKEND_SAN
    assert labels["connection_security_policy"] == "mutual_tls"


def test_inbound_header_naming_another_identity_is_not_believed(
    backend: NodeIdentity, frontend: NodeIdentity,
) -> None:
    """A header naming another namespace or account than the certificate is ignored."""
    other_account = encode_peer_header({**frontend.metadata, "SERVICE_ACCOUNT": "admin"})
    bare = _labels(http_label_values(
        HttpEntry(upstream_cluster="inbound|8080||", tls=INBOUND_MTLS), backend))
    for header in (FORGED, other_account):
        entry = HttpEntry(upstream_cluster="inbound|8080||", tls=INBOUND_MTLS,
                          request_headers={"x-mixer-peer-metadata": header})
        assert _labels(http_label_values(entry, backend)) == bare
    # What the certificate alone says: namespace, principal, the account as workload.
    assert _source(bare) == ("frontend", "shop", FRONTEND_SAN)
    assert (bare["source_canonical_service"], bare["source_app"]) == ("frontend", "unknown")


def test_inbound_certificate_resolves_through_the_directory(
    backend: NodeIdentity, frontend: NodeIdentity,
) -> None:
    """With no believable claim, the workload known for the principal gives the labels."""
    peers = PeerDirectory()
    peers.learn(FRONTEND_SAN, frontend.workload)
    entry = HttpEntry(upstream_cluster="inbound|8080||", tls=INBOUND_MTLS,
                      request_headers={"x-mixer-peer-metadata": FORGED})
    labels = _labels(http_label_values(entry, backend, peers=peers))
    assert _source(labels) == ("frontend", "shop", FRONTEND_SAN)
    assert (labels["source_app"], labels["source_canonical_revision"]) == ("frontend", "v1")


def test_directory_forgets_ambiguous_principals_and_stays_bounded(
    frontend: NodeIdentity, backend: NodeIdentity,
) -> None:
    """A principal two workloads share resolves to nothing; the oldest entry goes first."""
    peers = PeerDirectory(max_entries=2)
    peers.learn(FRONTEND_SAN, frontend.workload)
    peers.learn(FRONTEND_SAN, backend.workload)
    assert peers.lookup(FRONTEND_SAN) is None
    peers.learn("spiffe://cluster.local/ns/a/sa/a", backend.workload)
    peers.learn("spiffe://cluster.local/ns/b/sa/b", backend.workload)
    assert len(peers) == 2 and peers.lookup(FRONTEND_SAN) is None
    found = peers.lookup("spiffe://cluster.local/ns/b/sa/b")
    assert found is not None and found.principal == "spiffe://cluster.local/ns/b/sa/b"


def test_client_side_principals_and_policy_from_the_upstream_certificate(
    frontend: NodeIdentity, backend_header: str,
) -> None:
    """reporter=source under mTLS: both principals and mutual_tls from the upstream SANs."""
    entry = HttpEntry(upstream_cluster=OUT, response_code=200, upstream_tls=OUTBOUND_MTLS,
                      response_headers={"x-mixer-peer-metadata": backend_header})
    labels = _labels(http_label_values(entry, frontend))
    assert (labels["source_principal"], labels["destination_principal"]) == (
        FRONTEND_SAN, BACKEND_SAN)
    assert (labels["destination_workload"], labels["destination_version"]) == ("backend", "v2")
    assert labels["connection_security_policy"] == "mutual_tls"
    # A response claim naming another namespace than the upstream certificate is ignored.
    forged = HttpEntry(upstream_cluster=OUT, response_code=200, upstream_tls=OUTBOUND_MTLS,
                       response_headers={"x-mixer-peer-metadata": FORGED})
    assert _labels(http_label_values(forged, frontend))["destination_workload"] == "backend"
    assert _labels(http_label_values(forged, frontend))["destination_app"] == "unknown"
    # Outbound the upstream's SAN was checked, so an agreeing claim needs no directory entry.
    peers = PeerDirectory()
    assert _labels(http_label_values(entry, frontend, peers=peers))["destination_app"] == (
        "backend")


def test_client_side_without_upstream_tls_keeps_istio_values(
    frontend: NodeIdentity, backend_header: str,
) -> None:
    """No upstream SANs logged: the response header names the peer, the policy is unknown."""
    entry = HttpEntry(upstream_cluster=OUT, response_code=200,
                      response_headers={"x-mixer-peer-metadata": backend_header})
    labels = _labels(http_label_values(entry, frontend))
    assert labels["destination_workload"] == "backend"
    assert (labels["destination_principal"], labels["connection_security_policy"]) == (
        "unknown", "unknown")


def test_tcp_peers_under_mtls_on_both_sides(frontend: NodeIdentity,
                                            backend: NodeIdentity) -> None:
    """TCP has no metadata exchange: each side's certificate names the other's workload."""
    peers = PeerDirectory()
    peers.learn(FRONTEND_SAN, frontend.workload)
    peers.learn(BACKEND_SAN, backend.workload)
    server = _labels(tcp_label_values(TcpEntry(
        event=TcpEvent.CLOSE, upstream_cluster="inbound|9000||", tls=INBOUND_MTLS),
        backend, peers=peers))
    client = _labels(tcp_label_values(TcpEntry(
        event=TcpEvent.CLOSE, upstream_cluster=OUT_TCP, upstream_tls=OUTBOUND_MTLS),
        frontend, peers=peers))
    for labels in (server, client):
        assert (labels["source_workload"], labels["source_principal"]) == (
            "frontend", FRONTEND_SAN)
        assert (labels["destination_workload"], labels["destination_principal"]) == (
            "backend", BACKEND_SAN)
        assert labels["connection_security_policy"] == "mutual_tls"
    assert client["destination_service_namespace"] == "shop"  # the certificate's namespace


def _tcp_value(registry: CollectorRegistry, name: str, values: tuple[str, ...]) -> float:
    labels = _labels(values)
    return registry.get_sample_value(name, {k: labels[k] for k in TCP_LABELS}) or 0.0


def test_tcp_open_before_the_handshake_counts_with_the_close_labels(
    frontend: NodeIdentity, backend: NodeIdentity,
) -> None:
    """A connect report without the peer certificate yet opens under the close's labels."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    # The frontend's own outbound report teaches the directory its principal.
    recorder.record_tcp(TcpEntry(event=TcpEvent.OPEN, upstream_cluster=OUT_TCP,
                                 stream_id="c", upstream_tls=OUTBOUND_MTLS), frontend)
    early = recorder.record_tcp(TcpEntry(
        event=TcpEvent.OPEN, upstream_cluster="inbound|9000||", stream_id="s",
        tls=TlsInfo(local_uri=BACKEND_SAN), received_bytes=1), backend)
    assert early.pending and not early.opened
    close = recorder.record_tcp(TcpEntry(
        event=TcpEvent.CLOSE, upstream_cluster="inbound|9000||", stream_id="s",
        tls=INBOUND_MTLS, received_bytes=4, sent_bytes=4), backend)
    assert close.opened and _labels(close.values)["source_workload"] == "frontend"
    assert _labels(close.values)["connection_security_policy"] == "mutual_tls"
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
                 "istio_tcp_received_bytes_total"):
        assert _tcp_value(registry, name, close.values) == (4 if "bytes" in name else 1)
    assert _tcp_value(registry, "istio_tcp_connections_opened_total", early.values) == 0


def test_tcp_connection_keeps_the_labels_it_opened_with(backend: NodeIdentity) -> None:
    """Later reports of a connection count in the series its open report chose."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    opened = recorder.record_tcp(TcpEntry(event=TcpEvent.OPEN, upstream_cluster="inbound|9000||",
                                          stream_id="s", tls=INBOUND_MTLS), backend)
    closed = recorder.record_tcp(TcpEntry(event=TcpEvent.CLOSE,
                                          upstream_cluster="inbound|9000||", stream_id="s",
                                          sent_bytes=3), backend)
    assert closed.values == opened.values
    assert _tcp_value(registry, "istio_tcp_connections_closed_total", opened.values) == 1
    assert _tcp_value(registry, "istio_tcp_sent_bytes_total", opened.values) == 3


def test_forged_headers_cannot_grow_metrics_beyond_the_cap(
    tmp_path: Path, backend: NodeIdentity,
) -> None:
    """Endless invented headers the certificate does not refute overflow past the cap."""
    path = tmp_path / "t.yaml"
    path.write_text("cardinality:\n  max_series_per_metric: 5\n")
    registry = CollectorRegistry()
    recorder = Recorder(load_config(path), registry)
    for i in range(50):
        # The certificate's own namespace and account, so believed: only the cap bounds them.
        header = encode_peer_header({"NAMESPACE": "shop", "SERVICE_ACCOUNT": "frontend",
                                     "WORKLOAD_NAME": f"w{i}"})
        for tls in (INBOUND_MTLS, None):
            recorder.record_http(HttpEntry(upstream_cluster="inbound|8080||", response_code=200,
                                           tls=tls,
                                           request_headers={"x-mixer-peer-metadata": header}),
                                 backend)
    assert recorder.series_count("istio_requests_total") == 6  # the cap plus overflow
    refused = registry.get_sample_value("mixer_telemetry_series_refused_total",
                                        {"metric": "istio_requests_total"})
    # Plaintext claims are never believed: those 50 requests share one series (peer unknown),
    # which leaves 4 for the invented workloads; the other 46 go to the overflow series.
    assert refused == 46


def test_servicer_maps_upstream_san_tags() -> None:
    """The upstream SAN custom tags become the entry's upstream TLS; ``-`` means absent."""
    pb = accesslog_pb2.HTTPAccessLogEntry()
    pb.common_properties.custom_tags["upstream_peer_uri_san"] = f"{BACKEND_SAN},spiffe://x/y"
    pb.common_properties.custom_tags["upstream_local_uri_san"] = FRONTEND_SAN
    assert http_entry(pb).upstream_tls == OUTBOUND_MTLS
    tcp = accesslog_pb2.TCPAccessLogEntry()
    tcp.common_properties.custom_tags["upstream_peer_uri_san"] = "-"
    tcp.common_properties.custom_tags["upstream_local_uri_san"] = "-"
    assert tcp_entry(tcp).upstream_tls is None


def test_node_service_account_is_the_local_principal(backend: NodeIdentity) -> None:
    """SERVICE_ACCOUNT in node metadata names the reporter's principal when no SAN does."""
    node = node_identity("sidecar~1.2.3.4~b-0.shop~shop.svc.cluster.local",
                         {**backend.metadata, "SERVICE_ACCOUNT": "backend"})
    labels = _labels(http_label_values(HttpEntry(upstream_cluster="inbound|8080||"), node))
    assert labels["destination_principal"] == BACKEND_SAN


def test_a_certificate_cannot_borrow_a_known_neighbours_name(
    backend: NodeIdentity, frontend: NodeIdentity, frontend_header: str,
) -> None:
    """A same-namespace peer claiming a workload known under another principal is not believed."""
    peers = PeerDirectory()
    peers.learn(FRONTEND_SAN, frontend.workload)
    intruder = "spiffe://cluster.local/ns/shop/sa/intruder"
    entry = HttpEntry(upstream_cluster="inbound|8080||",
                      tls=TlsInfo(peer_uri=intruder, local_uri=BACKEND_SAN),
                      request_headers={"x-mixer-peer-metadata": frontend_header})
    labels = _labels(http_label_values(entry, backend, peers=peers))
    assert _source(labels) == ("intruder", "shop", intruder)
    assert labels["source_app"] == "unknown"


def test_a_claim_naming_no_account_needs_the_directory_to_back_it(
    backend: NodeIdentity, frontend: NodeIdentity, frontend_header: str,
) -> None:
    """Without SERVICE_ACCOUNT a claim is believed only if it names the principal's workload."""
    invented = encode_peer_header({"NAMESPACE": "shop", "WORKLOAD_NAME": "invented"})
    peers = PeerDirectory()

    def source(header: str) -> tuple[str, str, str]:
        entry = HttpEntry(upstream_cluster="inbound|8080||", tls=INBOUND_MTLS,
                          request_headers={"x-mixer-peer-metadata": header})
        labels = _labels(http_label_values(entry, backend, peers=peers))
        return labels["source_workload"], labels["source_app"], labels["source_principal"]

    assert source(invented) == ("frontend", "unknown", FRONTEND_SAN)  # the certificate's
    assert source(frontend_header) == ("frontend", "unknown", FRONTEND_SAN)  # unconfirmed yet
    peers.learn(FRONTEND_SAN, frontend.workload)
    assert source(frontend_header) == ("frontend", "frontend", FRONTEND_SAN)
    assert source(invented) == ("frontend", "frontend", FRONTEND_SAN)  # the directory's
