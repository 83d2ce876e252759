"""controlplane.envoy.shipped: the checked-in configs are exactly what the generator renders.

Besides the regenerate-and-compare check, these read the rendered files the way a reviewer
does: the choices that matter (fail closed / fail open, HTTP/2 to gRPC services) are stated in
the YAML even where proto3 would leave them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from google.protobuf import json_format

from controlplane.envoy.shipped import (
    GENERATED_HEADER,
    SHIPPED_COMPOSE,
    SHIPPED_LOCAL,
    shipped_files,
)

REPO = Path(__file__).resolve().parents[3]


def _shipped(rel: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / rel).read_text())
    return data


def _hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    for item in config["static_resources"]["listeners"]:
        if item["name"] == listener:
            hcm: dict[str, Any] = item["filter_chains"][0]["filters"][0]["typed_config"]
            return hcm
    raise AssertionError(f"no listener {listener}")


def test_shipped_files_match_the_generator() -> None:
    """Every checked-in generated Envoy config equals what the generator renders now."""
    stale = [rel for rel, text in shipped_files(REPO).items()
             if not (REPO / rel).is_file() or (REPO / rel).read_text() != text]
    assert not stale, f"regenerate with `mixer envoy-config --write-shipped`: {stale}"


def test_every_shipped_file_is_a_bootstrap_under_the_header() -> None:
    """Each file starts with the do-not-edit header and parses back as a Bootstrap."""
    files = shipped_files(REPO)
    assert set(files) == set(SHIPPED_LOCAL) | set(SHIPPED_COMPOSE)
    for rel, text in files.items():
        assert text.startswith(GENERATED_HEADER), rel
        config = json_format.ParseDict(yaml.safe_load(text), Bootstrap())
        assert config.static_resources.listeners, rel


def test_shipped_files_state_failure_modes_and_http2() -> None:
    """The YAML says failure_mode_allow: false, failure_mode_deny: false and HTTP/2 for gRPC."""
    for rel in (*SHIPPED_LOCAL, *SHIPPED_COMPOSE):
        config = _shipped(rel)
        for listener in config["static_resources"]["listeners"]:
            filters = {f["name"]: f["typed_config"]
                       for f in _hcm(config, listener["name"])["http_filters"]}
            assert filters["envoy.filters.http.ext_authz"]["failure_mode_allow"] is False, rel
            assert filters["envoy.filters.http.ratelimit"]["failure_mode_deny"] is False, rel
        for cluster in config["static_resources"]["clusters"]:
            assert "lb_policy" in cluster, (rel, cluster["name"])
            if cluster["name"].startswith("mixer_"):
                options = cluster["typed_extension_protocol_options"][
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                assert options["explicit_http_config"] == {"http2_protocol_options": {}}


def test_shipped_sidecar_names_the_workload() -> None:
    """The shipped frontend sidecar carries Istio's node id and the workload identity."""
    config = _shipped("envoy-configs/sidecar-frontend.yaml")
    assert config["node"]["id"] == (
        "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local")
    assert config["node"]["metadata"]["LABELS"]["app"] == "frontend"
    vhost = _hcm(config, "inbound")["route_config"]["virtual_hosts"][0]
    ext = vhost["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert ext["check_settings"]["context_extensions"]["workload"] == "frontend"


def test_compose_files_dial_services_by_name() -> None:
    """The compose configs listen on 0.0.0.0 and reach the services by DNS name."""
    config = _shipped("compose/envoy/envoy-ingress-gateway.yaml")
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"][
        "address"] == "0.0.0.0"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert clusters["mixer_authz"]["type"] == "STRICT_DNS"
    assert "mixer_tracing" in clusters
