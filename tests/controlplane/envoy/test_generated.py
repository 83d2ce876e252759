"""``mixer envoy-config``: generated configs, the shipped files, derived rate-limit actions."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.envoy.mesh import Mesh, compose_mesh, local_mesh, render_mesh
from controlplane.envoy.model import Endpoint
from controlplane.envoy.ratelimit_actions import (
    actions_for_paths,
    actions_from_config,
    evaluate,
    path_matches,
    sample_request,
)
from controlplane.envoy.render import message_to_data
from controlplane.envoy.shipped import shipped_files
from envoy_mixer import cli
from envoy_mixer.common.errors import ConfigError
from envoy_mixer.dev import procs

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_LIMITS = REPO / "examples" / "ratelimit.yaml"


def _rendered(mesh: Mesh) -> dict[str, dict[str, Any]]:
    """The mesh's bootstraps in their JSON mapping, as the shipped YAML files hold them."""
    return {role: message_to_data(bootstrap) for role, bootstrap in render_mesh(mesh).items()}


def _hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    for item in config["static_resources"]["listeners"]:
        if item["name"] == listener:
            hcm: dict[str, Any] = item["filter_chains"][0]["filters"][0]["typed_config"]
            return hcm
    raise AssertionError(f"no listener {listener}")


def _cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    for item in config["static_resources"]["clusters"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no cluster {name}")


def test_shipped_files_match_the_generator() -> None:
    """Every checked-in generated Envoy config equals what the generator renders now."""
    stale = [rel for rel, text in shipped_files(REPO).items()
             if not (REPO / rel).is_file() or (REPO / rel).read_text() != text]
    assert not stale, f"regenerate with `mixer envoy-config --write-shipped`: {stale}"


def test_every_example_descriptor_path_is_reachable() -> None:
    """For each descriptor path with a limit, some generated action list produces exactly it."""
    from ratelimit.config import load_config

    config = load_config(EXAMPLE_LIMITS)
    for domain in config.domains:
        paths = config.descriptor_paths(domain)
        actions = actions_from_config(EXAMPLE_LIMITS, domain)
        assert paths
        for path in paths:
            sent = [evaluate(a, sample_request(path)) for a in actions]
            assert any(d is not None and path_matches(path, d) for d in sent), path


def test_path_prefix_descriptor_only_sent_for_matching_paths() -> None:
    """A path_prefix limit is not sent for other paths (the match drops the descriptor)."""
    (actions,) = actions_for_paths([(("path_prefix", "/api/limited"), ("remote_address", None))])
    request = sample_request((("path_prefix", "/other"),))
    assert evaluate(actions, request) is None
    hit = sample_request((("path_prefix", "/api/limited"),))
    assert evaluate(actions, hit) == (("path_prefix", "/api/limited"),
                                      ("remote_address", "192.0.2.10"))


def test_unknown_descriptor_key_is_an_error_naming_the_path() -> None:
    """A key Envoy cannot send is rejected with the key, the known keys and the path."""
    with pytest.raises(ConfigError) as info:
        actions_for_paths([(("tenant", "a"),)], file="limits.yaml")
    text = str(info.value)
    assert text.startswith("limits.yaml: descriptor key 'tenant' has no Envoy action")
    assert "field tenant=a" in text


def test_generic_key_needs_a_literal_value() -> None:
    """generic_key without a value (or with a wildcard) cannot be produced by Envoy."""
    with pytest.raises(ConfigError, match="generic_key needs a literal value"):
        actions_for_paths([(("generic_key", None),)])


def test_sidecar_carries_identity_and_explicit_failure_modes() -> None:
    """Sidecar: Istio node id/metadata, cluster names, authz fails closed, quota open, HTTP/2."""
    config = _rendered(local_mesh())["sidecar-frontend"]
    node = config["node"]
    assert node["id"] == "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"
    assert node["cluster"] == "frontend.default"
    assert node["metadata"]["WORKLOAD_NAME"] == "frontend"
    assert node["metadata"]["LABELS"]["app"] == "frontend"
    _cluster(config, "inbound|8080||")
    _cluster(config, "outbound|8080||backend.default.svc.cluster.local")
    for name in ("mixer_authz", "mixer_ratelimit", "mixer_telemetry"):
        opts = _cluster(config, name)["typed_extension_protocol_options"]
        http = opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert http["explicit_http_config"] == {"http2_protocol_options": {}}
    inbound = _hcm(config, "inbound")
    filters = {f["name"]: f["typed_config"] for f in inbound["http_filters"]}
    assert filters["envoy.filters.http.ext_authz"]["failure_mode_allow"] is False
    assert filters["envoy.filters.http.ext_authz"]["transport_api_version"] == "V3"
    assert filters["envoy.filters.http.ratelimit"]["failure_mode_deny"] is False
    assert list(filters)[-1] == "envoy.filters.http.router"
    assert inbound["normalize_path"] is True and inbound["merge_slashes"] is True
    vhost = inbound["route_config"]["virtual_hosts"][0]
    ext = vhost["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert ext["check_settings"]["context_extensions"]["namespace"] == "default"
    assert ext["check_settings"]["context_extensions"]["label.app"] == "frontend"
    health = vhost["routes"][0]
    assert health["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True


def test_sidecar_logs_grpc_message_counts() -> None:
    """grpc_stats runs before the router and its filter state reaches the access log."""
    config = _rendered(local_mesh())["sidecar-frontend"]
    for direction in ("inbound", "outbound"):
        hcm = _hcm(config, direction)
        names = [f["name"] for f in hcm["http_filters"]]
        assert names[-2:] == ["envoy.filters.http.grpc_stats", "envoy.filters.http.router"]
        stats = hcm["http_filters"][-2]["typed_config"]
        assert stats["emit_filter_state"] is True
        common = hcm["access_log"][0]["typed_config"]["common_config"]
        assert common["filter_state_objects_to_log"] == ["envoy.filters.http.grpc_stats"]


def test_client_facing_listeners_stash_peer_response_headers() -> None:
    """Ingress and outbound listeners move peer response headers into metadata; inbound does not."""
    configs = _rendered(local_mesh())
    cases = [(configs["ingress-gateway"], "ingress", True),
             (configs["sidecar-frontend"], "outbound", True),
             (configs["sidecar-frontend"], "inbound", False)]
    for config, listener_name, stripped in cases:
        filters = _hcm(config, listener_name)["http_filters"]
        first = filters[0]
        if not stripped:
            assert first["name"] != "envoy.filters.http.header_to_metadata"
            continue
        assert first["name"] == "envoy.filters.http.header_to_metadata"
        rules = first["typed_config"]["response_rules"]
        assert {r["header"] for r in rules} == {"x-mixer-peer-metadata",
                                                "x-mixer-peer-metadata-id"}
        assert all(r["remove"] is True for r in rules)
        assert {r["on_header_present"]["metadata_namespace"] for r in rules} == {
            "mixer.peer_response"}


def test_peer_metadata_headers_decode_to_the_workload_identity() -> None:
    """Outbound requests carry base64 JSON metadata and the node id; inbound responses too."""
    config = _rendered(local_mesh())["sidecar-frontend"]
    outbound = _hcm(config, "outbound")["route_config"]["virtual_hosts"][0]
    headers = {h["header"]["key"]: h["header"]["value"] for h in outbound["request_headers_to_add"]}
    meta = json.loads(base64.b64decode(headers["x-mixer-peer-metadata"]))
    assert meta["WORKLOAD_NAME"] == "frontend" and meta["NAMESPACE"] == "default"
    assert set(meta) == {"NAME", "NAMESPACE", "WORKLOAD_NAME", "CLUSTER_ID", "LABELS"}
    assert headers["x-mixer-peer-metadata-id"] == config["node"]["id"]
    inbound = _hcm(config, "inbound")["route_config"]["virtual_hosts"][0]
    assert {h["header"]["key"] for h in inbound["response_headers_to_add"]} == {
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"}
    log = _hcm(config, "inbound")["access_log"][0]["typed_config"]
    assert "x-mixer-peer-metadata" in log["additional_request_headers_to_log"]
    assert "x-mixer-peer-metadata-id" in log["additional_response_headers_to_log"]
    assert log["common_config"]["transport_api_version"] == "V3"


def test_compose_mesh_uses_service_names_and_dns_clusters() -> None:
    """Compose configs dial services by DNS name (STRICT_DNS) and trace to Jaeger."""
    config = _rendered(compose_mesh())["ingress-gateway"]
    authz = _cluster(config, "mixer_authz")
    assert authz["type"] == "STRICT_DNS"
    address = authz["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "authz", "port_value": 9191}
    assert "tracing" in _hcm(config, "ingress")
    _cluster(config, "mixer_tracing")


def test_cli_generates_a_sidecar_with_given_ports(capsys: pytest.CaptureFixture[str]) -> None:
    """`mixer envoy-config --role sidecar ...` prints a bootstrap with the given addresses."""
    code = cli.main([
        "envoy-config", "--role", "sidecar", "--workload", "reviews", "--namespace", "shop",
        "--version", "v2", "--inbound-port", "9006", "--outbound-port", "9001",
        "--app-address", "127.0.0.1:9080", "--upstream", "ratings.shop=127.0.0.1:9106",
        "--authz", "10.0.0.5:9191",
    ])
    assert code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["node"]["cluster"] == "reviews.shop"
    assert config["node"]["metadata"]["LABELS"]["version"] == "v2"
    _cluster(config, "outbound|8080||ratings.shop.svc.cluster.local")
    addr = _cluster(config, "mixer_authz")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert addr["endpoint"]["address"]["socket_address"]["address"] == "10.0.0.5"


def test_cli_snippets_and_actions(capsys: pytest.CaptureFixture[str]) -> None:
    """--snippets prints clusters, filters, per-route identity and derived rate_limits."""
    code = cli.main(["envoy-config", "--role", "ingress", "--snippets", "--authz",
                     "authz.internal:9191", "--ratelimit-config", str(EXAMPLE_LIMITS)])
    assert code == 0
    out = capsys.readouterr().out
    for needle in ("mixer_authz", "authz.internal", "envoy.filters.http.ext_authz",
                   "failure_mode_allow: false", "failure_mode_deny: false",
                   "envoy.access_loggers.http_grpc", "context_extensions",
                   "header_value_match", "disabled: true"):
        assert needle in out, needle
    code = cli.main(["envoy-config", "--role", "ingress", "--rate-limit-actions",
                     "--ratelimit-config", str(EXAMPLE_LIMITS)])
    data = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and data["domain"] == "ingress" and len(data["rate_limits"]) == 3


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A limits file with a key Envoy cannot send fails with exit 1 and a precise message."""
    bad = tmp_path / "limits.yaml"
    bad.write_text("domain: ingress\ndescriptors:\n  - key: tenant\n"
                   "    rate_limit: {unit: second, requests_per_unit: 1}\n")
    code = cli.main(["envoy-config", "--role", "ingress", "--upstream", "web=127.0.0.1:1",
                     "--ratelimit-config", str(bad)])
    assert code == 1
    assert "descriptor key 'tenant' has no Envoy action" in capsys.readouterr().err


def test_endpoint_parse_rejects_garbage() -> None:
    """HOST:PORT parsing names the bad value."""
    assert Endpoint.parse("authz:9191") == Endpoint("authz", 9191)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        Endpoint.parse("authz")


@pytest.mark.slow
def test_cli_output_validates_in_envoy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CLI-generated egress gateway with tracing passes `envoy --mode validate`."""
    assert cli.main(["envoy-config", "--role", "egress", "--tracing", "127.0.0.1:4317",
                     "--ratelimit-config", str(EXAMPLE_LIMITS)]) == 0
    path = tmp_path / "egress.yaml"
    path.write_text(capsys.readouterr().out)
    result = procs.validate_envoy_config(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_egress_gateway_reaches_only_hosts_a_policy_allows(
    tmp_path: Path, free_port: Callable[[], int],
    start_envoy: Callable[..., procs.ManagedProcess],
    start_mixer: Callable[..., procs.ManagedProcess],
) -> None:
    """Through the egress gateway, an allowed Host is proxied (200), any other gets 403."""
    import http.server
    import threading

    from controlplane.envoy.mesh import EGRESS
    from controlplane.envoy.model import MixerServices, ProxyOptions
    from controlplane.envoy.render import to_yaml
    from controlplane.envoy.roles import egress_gateway
    from envoy_mixer.dev.up import http_get

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"external\n")

        def log_message(self, *args: object) -> None:
            pass

    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    app_port = app.server_address[1]
    try:
        policy = tmp_path / "egress-policy.yaml"  # not egress.yaml: start_envoy writes that
        policy.write_text(f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
    - to: [{{operation: {{hosts: ["127.0.0.1:{app_port}"]}}}}]
""")
        authz, authz_admin, port, admin = free_port(), free_port(), free_port(), free_port()
        start_mixer(["authz", "--policy", str(policy), "--listen", f"127.0.0.1:{authz}",
                     "--admin", f"127.0.0.1:{authz_admin}"], authz_admin)
        services = MixerServices(authz=Endpoint("127.0.0.1", authz),
                                 ratelimit=Endpoint("127.0.0.1", free_port()),
                                 telemetry=Endpoint("127.0.0.1", free_port()))
        config = egress_gateway(EGRESS, services, ProxyOptions(
            admin=Endpoint("127.0.0.1", admin), ratelimit_domain="egress"), port=port)
        start_envoy(to_yaml(config), admin, name="egress")
        url = f"http://127.0.0.1:{port}/"
        allowed = http_get(url, headers={"Host": f"127.0.0.1:{app_port}"})
        assert (allowed.status, allowed.body) == (200, "external\n")
        denied = http_get(url, headers={"Host": f"localhost:{app_port}"})
        assert denied.status == 403
    finally:
        app.shutdown()
        app.server_close()
