"""Telemetry config: defaults, Telemetry-API-like overrides, and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from envoy_mixer.common.errors import ConfigError
from telemetry.config import ENVOY_DEFAULT_BUCKETS, LabelSource, MetricKind, load_config

CONFIGS = Path(__file__).parent / "configs"
REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_istios_ten_metrics_with_envoy_buckets() -> None:
    """No file: all ten metrics, Istio's label counts, Envoy's 19 default bounds."""
    config = load_config(None)
    shape = {m.name: (m.kind, len(m.label_names)) for m in config.metrics}
    assert shape == {
        "istio_requests_total": (MetricKind.COUNTER, 25),
        "istio_request_duration_milliseconds": (MetricKind.HISTOGRAM, 25),
        "istio_request_bytes": (MetricKind.HISTOGRAM, 25),
        "istio_response_bytes": (MetricKind.HISTOGRAM, 25),
        "istio_request_messages_total": (MetricKind.COUNTER, 20),
        "istio_response_messages_total": (MetricKind.COUNTER, 20),
        "istio_tcp_sent_bytes_total": (MetricKind.COUNTER, 23),
        "istio_tcp_received_bytes_total": (MetricKind.COUNTER, 23),
        "istio_tcp_connections_opened_total": (MetricKind.COUNTER, 23),
        "istio_tcp_connections_closed_total": (MetricKind.COUNTER, 23),
    }
    duration = config.metric("istio_request_duration_milliseconds")
    assert duration is not None and duration.buckets == ENVOY_DEFAULT_BUCKETS
    assert ENVOY_DEFAULT_BUCKETS[0] == 0.5 and ENVOY_DEFAULT_BUCKETS[-1] == 3600000
    assert len(ENVOY_DEFAULT_BUCKETS) == 19


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty config file is the same as no file."""
    path = tmp_path / "t.yaml"
    path.write_text("# nothing\n")
    assert len(load_config(path).metrics) == 10


def test_overrides_disable_remove_add_and_rebucket(tmp_path: Path) -> None:
    """Overrides apply in order: disable, REMOVE a label, UPSERT from header/metadata, buckets."""
    path = tmp_path / "t.yaml"
    path.write_text(
        "metrics:\n"
        "  buckets: {bytes: [10, 100]}\n"
        "  overrides:\n"
        "    - match: [TCP_SENT_BYTES, istio_tcp_received_bytes_total]\n"
        "      disabled: true\n"
        "    - match: ALL_METRICS\n"
        "      tags:\n"
        "        destination_version: {operation: REMOVE}\n"
        "    - match: REQUEST_COUNT\n"
        "      tags:\n"
        "        request_host: {value: \"request.headers['Host']\"}\n"
        "        mesh_id: {value: \"node.metadata['MESH_ID']\"}\n"
        "    - match: REQUEST_DURATION\n"
        "      buckets: [1, 2, 3]\n"
    )
    config = load_config(path)
    assert config.disabled == {"istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"}
    requests = config.metric("istio_requests_total")
    assert requests is not None
    assert "destination_version" not in requests.label_names
    # Added labels follow the standard ones sorted by name, as Istio orders dimensions.
    assert requests.label_names[-2:] == ("mesh_id", "request_host")
    assert requests.label_sources[-2:] == (LabelSource("node_metadata", "MESH_ID"),
                                           LabelSource("request_header", "host"))
    assert requests.picker is None  # added labels take the slow path
    duration = config.metric("istio_request_duration_milliseconds")
    assert duration is not None and duration.buckets == (1, 2, 3)
    size = config.metric("istio_request_bytes")
    assert size is not None and size.buckets == (10, 100) and size.picker is not None
    assert config.describe()["metrics"][0]["added"] == {
        "request_host": "request.headers['host']", "mesh_id": "node.metadata['MESH_ID']"}


@pytest.mark.parametrize(("name", "message"), [
    ("unknown_key.yaml",
     "unknown_key.yaml: unknown key 'bucketz' (line 2, field metrics.bucketz)"),
    ("buckets_not_increasing.yaml",
     "buckets_not_increasing.yaml: buckets must be strictly increasing "
     "(line 3, field metrics.buckets.duration_ms)"),
    ("unknown_metric.yaml",
     "unknown_metric.yaml: unknown metric 'REQUEST_COUNTS': use ALL_METRICS, an IstioMetric "
     "name such as REQUEST_COUNT, or a metric name such as istio_requests_total "
     "(line 3, field metrics.overrides[0].match)"),
    ("bad_expression.yaml",
     "bad_expression.yaml: unsupported value expression 'request.host': use "
     "request.headers['name'], response.headers['name'], node.metadata['KEY'], "
     "node.labels['key'] or a quoted literal (line 5, field metrics.overrides[0].tags.host.value)"),
    ("buckets_on_counter.yaml",
     "buckets_on_counter.yaml: buckets apply only to histogram metrics "
     "(line 4, field metrics.overrides[0].buckets)"),
    ("sampling_out_of_range.yaml",
     "sampling_out_of_range.yaml: Input should be less than or equal to 1 "
     "(line 3, field access_log.sampling)"),
    ("zero_series_cap.yaml",
     "zero_series_cap.yaml: Input should be greater than or equal to 1 "
     "(line 2, field cardinality.max_series_per_metric)"),
    ("upsert_without_value.yaml",
     "upsert_without_value.yaml: tag 'request_host': UPSERT needs a value "
     "(line 4, field metrics.overrides[0].tags)"),
])
def test_config_errors_name_file_line_and_field(name: str, message: str) -> None:
    """Each bad file fails with the exact file/line/field message."""
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / name)
    assert str(info.value) == message


def test_shipped_example_config_loads() -> None:
    """examples/telemetry.yaml is valid."""
    config = load_config(REPO / "examples" / "telemetry.yaml")
    assert config.metrics
