"""Package structure rules and the CLI surface."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from telemetry.identity import SERVICES_TAG

PACKAGE = Path(__file__).resolve().parents[2] / "telemetry"
DOMAIN = ("config", "entries", "identity", "labels", "recorder", "graph", "accesslog",
          "pipeline", "errors", "exposition")


def test_mixer_telemetry_help_lists_the_issue_flags() -> None:
    """`mixer telemetry --help` offers --config, --listen and --admin."""
    from envoy_mixer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["telemetry", "--config", "x.yaml", "--listen", "127.0.0.1:1",
                              "--admin", "127.0.0.1:2"])
    assert (str(args.config), args.listen, args.admin) == ("x.yaml", "127.0.0.1:1", "127.0.0.1:2")
    defaults = parser.parse_args(["telemetry"])
    assert (defaults.listen, defaults.admin, defaults.config) == (
        "127.0.0.1:9401", "127.0.0.1:9402", None)


def test_python_m_telemetry_help() -> None:
    """`python -m telemetry --help` works standalone."""
    out = subprocess.run([sys.executable, "-m", "telemetry", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--config" in out and "--listen" in out and "--admin" in out


def _walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize("name", ["sidecar-backend.yaml", "sidecar-frontend.yaml",
                                  "telemetry.yaml"])
def test_shipped_sidecars_log_the_inbound_service(name: str) -> None:
    """Inbound clusters name their service in istio.services; inbound loggers log that tag."""
    config = yaml.safe_load((PACKAGE.parent / "envoy-configs" / name).read_text())
    inbound = [c for c in config["static_resources"]["clusters"]
               if c["name"].startswith("inbound|")]
    assert inbound
    node_ns = config["node"]["metadata"]["NAMESPACE"]
    workload = config["node"]["metadata"]["WORKLOAD_NAME"]
    for cluster in inbound:
        (service,) = cluster["metadata"]["filter_metadata"]["istio"]["services"]
        assert service == {"host": f"{workload}.{node_ns}.svc.cluster.local",
                           "name": workload, "namespace": node_ns}, cluster["name"]
    loggers = [item["typed_config"]["common_config"] for item in _walk(config)
               if str(item.get("name", "")).startswith("envoy.access_loggers.")]
    inbound_loggers = [c for c in loggers if "inbound" in c["log_name"]]
    assert inbound_loggers
    for common in inbound_loggers:
        tags = {t["tag"]: t for t in common.get("custom_tags", [])}
        assert tags[SERVICES_TAG]["metadata"] == {
            "kind": {"cluster": {}},
            "metadata_key": {"key": "istio", "path": [{"key": "services"}]}}, common["log_name"]
