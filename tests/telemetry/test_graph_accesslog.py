"""Service graph windows and JSON access logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from telemetry.accesslog import AccessLogWriter, is_error
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent, TlsInfo
from telemetry.graph import ServiceGraph
from telemetry.identity import NodeIdentity
from telemetry.labels import http_label_values

OUT = "outbound|8080||backend.shop.svc.cluster.local"
MTLS = TlsInfo(peer_uri="spiffe://cluster.local/ns/shop/sa/frontend",
               local_uri="spiffe://cluster.local/ns/shop/sa/backend")


class Clock:
    """A settable wall clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_graph_edge_rates_errors_and_percentiles(
    frontend: NodeIdentity, backend: NodeIdentity, frontend_header: str, backend_header: str,
) -> None:
    """Destination reports win over source ones; rates, error rate, p50/p99 over the window."""
    clock = Clock()
    graph = ServiceGraph(60, clock=clock)
    for i in range(10):
        code = 500 if i == 0 else 200
        src = HttpEntry(upstream_cluster=OUT, response_code=code,
                        response_headers={"x-mixer-peer-metadata": backend_header})
        # The server side believes the header only under the client's certificate.
        dst = HttpEntry(upstream_cluster="inbound|8080||", response_code=code,
                        request_headers={"x-mixer-peer-metadata": frontend_header},
                        tls=MTLS)
        graph.add_request(http_label_values(src, frontend), 3.0)
        graph.add_request(http_label_values(dst, backend), 4.0 if i < 9 else 900.0)
        clock.now += 1
    snap = graph.snapshot()
    (edge,) = snap["edges"]
    assert (edge["source"], edge["destination"], edge["reporter"]) == (
        "frontend.shop", "backend.shop", "destination")
    assert edge["requests"] == 10 and edge["error_rate"] == 0.1
    assert 3 < edge["p50_ms"] <= 5 and edge["p99_ms"] > 600
    assert edge["mtls"] is True and edge["mtls_ratio"] == 1.0
    assert edge["request_rate"] > 0
    assert {n["id"] for n in snap["nodes"]} == {"frontend.shop", "backend.shop"}


def test_graph_forgets_old_traffic(frontend: NodeIdentity) -> None:
    """Traffic older than the window leaves the graph."""
    clock = Clock()
    graph = ServiceGraph(60, clock=clock)
    graph.add_request(http_label_values(HttpEntry(upstream_cluster=OUT, response_code=200),
                                        frontend), 1.0)
    assert graph.snapshot()["edges"][0]["destination"] == "svc:backend.shop.svc.cluster.local"
    clock.now += 200
    assert graph.snapshot() == {"window_seconds": 60, "generated_at": clock.now,
                                "nodes": [], "edges": []}


def test_access_log_line_fields(
    frontend: NodeIdentity, capsys: pytest.CaptureFixture[str]
) -> None:
    """One JSON line on stdout with Envoy's fields and the identity labels."""
    writer = AccessLogWriter("stdout")  # made under capsys: writes to the captured stdout
    entry = HttpEntry(upstream_cluster=OUT, response_code=200, method="GET", path="/x",
                      start_time=1_700_000_000.5, duration_ms=2.5, request_id="rid")
    writer.write(entry, frontend, http_label_values(entry, frontend))
    writer.flush()
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["type"] == "http" and record["path"] == "/x" and record["request_id"] == "rid"
    assert record["start_time"] == "2023-11-14T22:13:20.500Z"
    assert record["reporter"] == "source" and record["source_workload"] == "frontend"
    assert record["destination_service"] == "backend.shop.svc.cluster.local"


def test_sampling_keeps_errors(tmp_path: Path, frontend: NodeIdentity) -> None:
    """With sampling 0 only errors (5xx, no response, response flags) are written, to a file."""
    path = tmp_path / "logs" / "access.jsonl"
    writer = AccessLogWriter(str(path), sampling=0.0, rng=lambda: 0.5)
    entries = [
        HttpEntry(upstream_cluster=OUT, response_code=200),
        HttpEntry(upstream_cluster=OUT, response_code=503),
        HttpEntry(upstream_cluster=OUT, response_code=0),
        HttpEntry(upstream_cluster=OUT, response_code=403, response_flags="UAEX"),
        HttpEntry(upstream_cluster=OUT, response_code=404),
    ]
    for e in entries:
        writer.write(e, frontend, http_label_values(e, frontend))
    writer.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x.get("response_code", 0) for x in lines] == [503, 0, 403]
    assert writer.sampled_out == 2
    assert is_error(TcpEntry(event=TcpEvent.CLOSE, response_flags="UF"))


def test_client_edge_shows_mtls_when_the_upstream_sans_are_logged(
    frontend: NodeIdentity,
) -> None:
    """A client-only edge says mtls when its entries carry the upstream certificates."""
    graph = ServiceGraph(60, clock=Clock())
    upstream = TlsInfo(peer_uri="spiffe://cluster.local/ns/shop/sa/backend",
                       local_uri="spiffe://cluster.local/ns/shop/sa/frontend")
    graph.add_request(http_label_values(
        HttpEntry(upstream_cluster=OUT, response_code=200, upstream_tls=upstream), frontend), 1.0)
    (edge,) = graph.snapshot()["edges"]
    assert (edge["reporter"], edge["mtls"], edge["mtls_ratio"]) == ("source", True, 1.0)
