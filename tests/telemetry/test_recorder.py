"""The series store: exact rendering, cardinality cap, idle expiry, added labels, TCP deltas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from telemetry.config import load_config
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent
from telemetry.identity import NodeIdentity
from telemetry.recorder import OVERFLOW, Recorder

OUT = "outbound|8080||backend.shop.svc.cluster.local"


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return load_config(path)


def test_histogram_renders_like_prometheus_client(frontend: NodeIdentity) -> None:
    """Our histogram text equals a prometheus_client Histogram's (minus _created)."""
    ours = CollectorRegistry()
    recorder = Recorder(load_config(None), ours)
    for ms in (0.3, 7.0, 7.0, 4000.0, 5_000_000.0):
        recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200,
                                       duration_ms=ms), frontend)
    theirs = CollectorRegistry()
    reference = Histogram(
        "istio_request_duration_milliseconds", "Request duration in milliseconds.",
        ["reporter"], registry=theirs,
        buckets=(0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
                 300000, 600000, 1800000, 3600000))
    for ms in (0.3, 7.0, 7.0, 4000.0, 5_000_000.0):
        reference.labels("source").observe(ms)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        out = []
        for line in text.splitlines():
            if line.startswith("istio_request_duration_milliseconds") and "_created" not in line:
                name, _, rest = line.partition("{")
                labels, _, value = rest.rpartition("} ")
                le = [p for p in labels.split(",") if p.startswith("le=")]
                out.append(f"{name}{le}{value}")
        return out

    assert lines(ours) == lines(theirs)
    text = generate_latest(ours).decode()
    assert 'le="3.6e+06"' in text and 'le="0.5"' in text and 'le="+Inf"' in text


def test_counts_per_series(
    frontend: NodeIdentity, backend_header: str, parse_metrics: Callable[[str], dict]
) -> None:
    """Entries with equal labels share a series; the sizes land in the byte histograms."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    entry = HttpEntry(upstream_cluster=OUT, response_code=200, request_bytes=300,
                      response_bytes=70, response_headers={"x-mixer-peer-metadata":
                                                           backend_header})
    for _ in range(3):
        recorder.record_http(entry, frontend)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=503), frontend)
    samples = parse_metrics(generate_latest(registry).decode())
    requests = {dict(k[1])["response_code"]: v for k, v in samples.items()
                if k[0] == "istio_requests_total"}
    assert requests == {"200": 3, "503": 1}
    sums = sorted(v for k, v in samples.items() if k[0] == "istio_request_bytes_sum")
    assert sums == [0, 900]
    assert recorder.series_count("istio_requests_total") == 2


def test_series_cap_uses_overflow_series_and_counts_refusals(
    tmp_path: Path, frontend: NodeIdentity
) -> None:
    """Past max_series_per_metric new label sets go to one __overflow__ series and are counted."""
    registry = CollectorRegistry()
    recorder = Recorder(_config(tmp_path, "cardinality: {max_series_per_metric: 2}\n"), registry)
    for code in (200, 201, 202, 203, 200):
        recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=code), frontend)
    assert recorder.series_count("istio_requests_total") == 3  # 2 + overflow
    overflow = {name: OVERFLOW for name in recorder.stores["istio_requests_total"].spec.
                label_names}
    assert registry.get_sample_value("istio_requests_total", overflow) == 2
    assert registry.get_sample_value(
        "istio_requests_total", {**overflow, "response_code": "200"}) is None
    assert registry.get_sample_value("mixer_telemetry_series_refused_total",
                                     {"metric": "istio_requests_total"}) == 2
    assert registry.get_sample_value("istio_request_duration_milliseconds_count",
                                     overflow) == 2


def test_idle_series_expire(tmp_path: Path, frontend: NodeIdentity) -> None:
    """A series untouched for series_idle_expiry_seconds disappears; active ones stay."""
    clock = Clock()
    registry = CollectorRegistry()
    recorder = Recorder(
        _config(tmp_path, "cardinality: {series_idle_expiry_seconds: 60}\n"), registry,
        clock=clock)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200), frontend)
    clock.now += 50
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=500), frontend)
    clock.now += 20
    text = generate_latest(registry).decode()
    assert 'response_code="500"' in text and 'response_code="200"' not in text
    assert registry.get_sample_value("mixer_telemetry_series_expired_total",
                                     {"metric": "istio_requests_total"}) == 1


def test_added_and_removed_labels(tmp_path: Path, frontend: NodeIdentity) -> None:
    """UPSERTed labels read request headers and node metadata; REMOVE drops a label."""
    registry = CollectorRegistry()
    recorder = Recorder(_config(tmp_path, (
        "metrics:\n  overrides:\n    - match: REQUEST_COUNT\n      tags:\n"
        "        api: {value: \"request.headers['x-api']\"}\n"
        "        zone: {value: \"node.labels['app']\"}\n"
        "        tier: {value: \"'gold'\"}\n"
        "        source_version: {operation: REMOVE}\n")), registry)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200,
                                   request_headers={"x-api": "v3"}), frontend)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200), frontend)
    text = generate_latest(registry).decode()
    line = [x for x in text.splitlines() if x.startswith("istio_requests_total{")]
    assert len(line) == 2
    assert all('zone="frontend"' in x and 'tier="gold"' in x for x in line)
    assert sum('api="v3"' in x for x in line) == 1 and sum('api="unknown"' in x for x in line) == 1
    assert all("source_version" not in x for x in line)
    bucket = [x for x in text.splitlines() if x.startswith("istio_request_bytes_bucket")]
    assert all("source_version" in x for x in bucket)  # other metrics untouched


def test_disabled_metric_is_not_rendered(tmp_path: Path, frontend: NodeIdentity) -> None:
    """A disabled metric is neither recorded nor exposed."""
    registry = CollectorRegistry()
    recorder = Recorder(_config(tmp_path, (
        "metrics:\n  overrides:\n    - match: REQUEST_SIZE\n      disabled: true\n")), registry)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200), frontend)
    text = generate_latest(registry).decode()
    assert "istio_request_bytes" not in text and "istio_response_bytes_bucket" in text


def test_tcp_open_periodic_close_counts_deltas(frontend: NodeIdentity) -> None:
    """One connection: opened once, closed once, cumulative byte reports become deltas."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    cluster = "outbound|5432||db.shop.svc.cluster.local"
    for event, rx, tx in ((TcpEvent.OPEN, 0, 0), (TcpEvent.PERIODIC, 100, 10),
                          (TcpEvent.CLOSE, 150, 40)):
        recorder.record_tcp(TcpEntry(event=event, upstream_cluster=cluster, stream_id="s1",
                                     received_bytes=rx, sent_bytes=tx), frontend)
    # A second connection seen only at its end still counts as opened and closed.
    recorder.record_tcp(TcpEntry(event=TcpEvent.CLOSE, upstream_cluster=cluster,
                                 stream_id="s2", received_bytes=5, sent_bytes=6), frontend)

    def total(name: str) -> float:
        return sum(v for k, v in _by_name(registry, name))

    assert total("istio_tcp_connections_opened_total") == 2
    assert total("istio_tcp_connections_closed_total") == 2
    assert total("istio_tcp_received_bytes_total") == 155
    assert total("istio_tcp_sent_bytes_total") == 46


def _by_name(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in registry.collect() for s in f.samples if s.name == name]


def test_grpc_message_counters(frontend: NodeIdentity) -> None:
    """gRPC entries add their message counts (20 labels); plain HTTP entries do not."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    grpc = HttpEntry(upstream_cluster=OUT, response_code=200,
                     request_headers={"content-type": "application/grpc"},
                     grpc_request_messages=3, grpc_response_messages=5)
    recorder.record_http(grpc, frontend)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200,
                                   grpc_request_messages=9), frontend)
    (labels, value), = _by_name(registry, "istio_request_messages_total")
    assert value == 3 and len(labels) == 20
    assert _by_name(registry, "istio_response_messages_total")[0][1] == 5


def test_reconfigure_keeps_unchanged_metrics(tmp_path: Path, frontend: NodeIdentity) -> None:
    """Reload keeps series of unchanged metrics and restarts those whose labels changed."""
    registry = CollectorRegistry()
    recorder = Recorder(load_config(None), registry)
    recorder.record_http(HttpEntry(upstream_cluster=OUT, response_code=200), frontend)
    recorder.configure(_config(tmp_path, (
        "metrics:\n  overrides:\n    - match: REQUEST_COUNT\n      tags:\n"
        "        source_version: {operation: REMOVE}\n")))
    assert recorder.series_count("istio_requests_total") == 0
    assert recorder.series_count("istio_request_bytes") == 1
