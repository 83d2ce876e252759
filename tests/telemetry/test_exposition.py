"""The /metrics text: prometheus_client's format, but every Istio series in Istio's label order."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from telemetry.config import load_config
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent
from telemetry.exposition import render
from telemetry.identity import NodeIdentity
from telemetry.recorder import Recorder

# Istio's order, written out here on purpose (istio_stats.cc appends tags in this order):
# the 19 peer labels as populatePeerInfo() pushes them, then what log()/reportHelper() adds.
PEER_ORDER = [
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
]
HTTP_ORDER = [*PEER_ORDER, "request_protocol", "response_code", "grpc_response_status",
              "response_flags", "connection_security_policy"]
TCP_ORDER = [*PEER_ORDER, "request_protocol", "response_flags", "connection_security_policy"]
ORDER = {
    "istio_requests_total": HTTP_ORDER,
    "istio_request_duration_milliseconds_bucket": [*HTTP_ORDER, "le"],
    "istio_request_duration_milliseconds_sum": HTTP_ORDER,
    "istio_request_duration_milliseconds_count": HTTP_ORDER,
    "istio_request_bytes_bucket": [*HTTP_ORDER, "le"],
    "istio_request_bytes_sum": HTTP_ORDER,
    "istio_request_bytes_count": HTTP_ORDER,
    "istio_response_bytes_bucket": [*HTTP_ORDER, "le"],
    "istio_response_bytes_sum": HTTP_ORDER,
    "istio_response_bytes_count": HTTP_ORDER,
    "istio_request_messages_total": PEER_ORDER,
    "istio_response_messages_total": PEER_ORDER,
    "istio_tcp_sent_bytes_total": TCP_ORDER,
    "istio_tcp_received_bytes_total": TCP_ORDER,
    "istio_tcp_connections_opened_total": TCP_ORDER,
    "istio_tcp_connections_closed_total": TCP_ORDER,
}
_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>.*)\} (?P<value>\S+)$")
_NAMES = re.compile(r'(?:^|,)([a-z_]+)="')


def _label_names(line: str) -> tuple[str, list[str]]:
    match = _LINE.match(line)
    assert match, line
    return match["name"], _NAMES.findall(match["labels"])


def _sorted_labels(line: str) -> str:
    """The same line with labels sorted by name, as prometheus_client writes it."""
    match = _LINE.match(line)
    if not match:
        return line
    parts = re.findall(r'[a-z_]+="(?:[^"\\]|\\.)*"', match["labels"])
    return f"{match['name']}{{{','.join(sorted(parts))}}} {match['value']}"


def _recorder_with_every_metric(node: NodeIdentity) -> CollectorRegistry:
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    recorder.record_http(HttpEntry(
        upstream_cluster="inbound|9090||", response_code=200, duration_ms=3.0,
        request_headers={"content-type": "application/grpc"},
        response_trailers={"grpc-status": "0"},
        grpc_request_messages=2, grpc_response_messages=3), node)
    recorder.record_tcp(TcpEntry(event=TcpEvent.CLOSE, upstream_cluster="inbound|9000||",
                                 stream_id="c1", received_bytes=4, sent_bytes=5), node)
    return registry


def test_every_istio_series_is_rendered_in_istio_label_order(backend: NodeIdentity) -> None:
    """Each of the ten metrics' lines lists its labels in Istio's order (le last on buckets)."""
    text = render(_recorder_with_every_metric(backend)).decode()
    seen: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("istio_"):
            continue
        name, labels = _label_names(line)
        assert labels == ORDER[name], name
        seen.add(name)
    assert seen == set(ORDER)


def test_exact_exposition_line(backend: NodeIdentity) -> None:
    """The exact text of an inbound TCP series: Istio's order, prometheus_client's value."""
    text = render(_recorder_with_every_metric(backend)).decode()
    assert (
        'istio_tcp_received_bytes_total{reporter="destination",source_workload="unknown",'
        'source_canonical_service="unknown",source_canonical_revision="latest",'
        'source_workload_namespace="unknown",source_principal="unknown",source_app="unknown",'
        'source_version="unknown",source_cluster="unknown",destination_workload="backend",'
        'destination_workload_namespace="shop",destination_principal="unknown",'
        'destination_app="backend",destination_version="v2",destination_service="backend",'
        'destination_canonical_service="backend",destination_canonical_revision="v2",'
        'destination_service_name="backend",destination_service_namespace="shop",'
        'destination_cluster="Kubernetes",request_protocol="tcp",response_flags="-",'
        'connection_security_policy="none"} 4.0'
    ) in text.splitlines()


def test_render_equals_prometheus_client_up_to_label_order(backend: NodeIdentity) -> None:
    """Same HELP/TYPE lines, names, values, escaping and _created gauges as generate_latest."""
    registry = _recorder_with_every_metric(backend)
    counter = Counter("plain_events", "Events.\nSecond line \\ here.", ["zeta", "alpha"],
                      registry=registry)
    counter.labels('quote " back \\ nl \n', "a").inc(2)
    Gauge("plain_level", "A gauge.", registry=registry).set(1.5)
    Histogram("plain_seconds", "A histogram.", ["b", "a"], registry=registry,
              buckets=(0.1, 1)).labels("x", "y").observe(0.5)
    ours = render(registry).decode().splitlines()
    theirs = generate_latest(registry).decode().splitlines()
    # _created values are wall-clock: compare those lines by name and labels only.
    strip = re.compile(r"(_created\{.*\}) \S+$")
    assert [strip.sub(r"\1", _sorted_labels(x)) for x in ours] == [
        strip.sub(r"\1", x) for x in theirs]
    assert 'plain_events_total{zeta="quote \\" back \\\\ nl \\n",alpha="a"} 2.0' in ours
