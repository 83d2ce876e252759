"""The compose Prometheus scrape config and the Grafana dashboards use our metrics and labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from telemetry.config import STANDARD_METRICS
from telemetry.labels import ISTIO_LABELS

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "compose" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Metric names the dashboards may use: ours, plus Istio's pre-1.x seconds histogram that
# Istio's own dashboards keep as an `or` fallback.
_HISTOGRAMS = {m.name for m in STANDARD_METRICS if m.kind.value == "histogram"}
KNOWN_METRICS = (
    {m.name for m in STANDARD_METRICS if m.kind.value == "counter"}
    | {f"{n}_{s}" for n in _HISTOGRAMS | {"istio_request_duration_seconds"}
       for s in ("bucket", "sum", "count")}
    | {"mixer_telemetry_entries_received_total", "mixer_telemetry_entries_processed_total",
       "mixer_telemetry_entries_dropped_total", "mixer_telemetry_backlog_entries",
       "mixer_telemetry_lag_seconds", "mixer_telemetry_series",
       "mixer_telemetry_series_refused_total", "mixer_config_loads_total",
       "mixer_telemetry_streams_active", "mixer_telemetry_streams_closed_total"}
)
KNOWN_LABELS = set(ISTIO_LABELS) | {"le", "type", "reason", "metric", "service", "result"}
_PROMQL_FUNCS = {"sum", "rate", "irate", "round", "histogram_quantile", "vector", "label_join",
                 "max", "increase", "by", "or", "on", "query_result"}


def _exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            out.extend((path.name, t["expr"]) for t in panel.get("targets", []))
        for var in board["templating"]["list"]:
            if var.get("type") == "query":
                out.append((path.name, var["query"]["query"]))
    return out


def test_prometheus_scrapes_the_three_admin_ports() -> None:
    """prometheus.yml scrapes ratelimit:6070, authz:9192 and telemetry:9402 at /metrics."""
    config = yaml.safe_load((REPO / "compose" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {"ratelimit:6070", "authz:9192", "telemetry:9402"}
    assert {job.get("metrics_path", "/metrics") for job in config["scrape_configs"]} == {
        "/metrics"}


def test_three_dashboards_and_matching_datasource() -> None:
    """Mesh, service and workload dashboards exist and point at the provisioned datasource."""
    assert [p.stem for p in DASHBOARDS] == ["istio-mesh", "istio-service", "istio-workload"]
    source = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = source["datasources"][0]["uid"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem
        for panel in board["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "envoy-mixer.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize(("dashboard", "expr"), _exprs())
def test_queries_use_only_emitted_metrics_and_istio_labels(dashboard: str, expr: str) -> None:
    """Every PromQL query names metrics we emit and labels Istio (or we) define."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    names = set(re.findall(r"\b(istio_[a-z_]+|mixer_[a-z_]+)\b", no_strings))
    assert names and names <= KNOWN_METRICS, names - KNOWN_METRICS
    used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        used |= {g.strip() for g in group.split(",") if g.strip()}
    assert used <= KNOWN_LABELS, used - KNOWN_LABELS
