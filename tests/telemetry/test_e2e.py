"""End to end through two real Envoys running envoy-configs/telemetry.yaml (frontend + backend).

HTTP 200/503, an ext_authz 403, a gRPC call and a TCP flow go frontend-sidecar -> backend-sidecar;
both sidecars stream access logs to an in-process telemetry service, whose /metrics must then
carry Istio's metric names, full label sets, values and counts for both reporters.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from aiohttp import web
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from envoy_mixer.dev import procs
from envoy_mixer.runtime.service import start
from envoy_mixer.runtime.settings import ServerSettings
from telemetry.app import build
from telemetry.identity import encode_peer_header

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "envoy-configs" / "telemetry.yaml"
SERVICE = "backend.default.svc.cluster.local"

BACKEND_META = {
    "NAME": "backend-0", "NAMESPACE": "default", "WORKLOAD_NAME": "backend",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "backend", "version": "v2",
               "service.istio.io/canonical-name": "backend",
               "service.istio.io/canonical-revision": "v2"},
}
BACKEND_ID = "sidecar~127.0.0.1~backend-0.default~default.svc.cluster.local"
#: The backend's inbound clusters' istio.services entry (the shipped file names the frontend).
BACKEND_SERVICE = {"host": SERVICE, "name": "backend", "namespace": "default"}

# Istio's label sets, written out here on purpose: this pins names and order-free sets.
PEER_LABELS = {
    "reporter",
    "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
}
TCP_LABELS = PEER_LABELS | {"request_protocol", "response_flags", "connection_security_policy"}
HTTP_LABELS = TCP_LABELS | {"response_code", "grpc_response_status"}
METRICS = {
    "istio_requests_total": ("counter", HTTP_LABELS),
    "istio_request_duration_milliseconds": ("histogram", HTTP_LABELS),
    "istio_request_bytes": ("histogram", HTTP_LABELS),
    "istio_response_bytes": ("histogram", HTTP_LABELS),
    "istio_request_messages_total": ("counter", PEER_LABELS),
    "istio_response_messages_total": ("counter", PEER_LABELS),
    "istio_tcp_sent_bytes_total": ("counter", TCP_LABELS),
    "istio_tcp_received_bytes_total": ("counter", TCP_LABELS),
    "istio_tcp_connections_opened_total": ("counter", TCP_LABELS),
    "istio_tcp_connections_closed_total": ("counter", TCP_LABELS),
}

FRONTEND = {
    "workload": "frontend", "workload_namespace": "default", "app": "frontend",
    "version": "v1", "canonical_service": "frontend", "canonical_revision": "v1",
    "cluster": "Kubernetes", "principal": "unknown",
}
BACKEND = {
    "workload": "backend", "workload_namespace": "default", "app": "backend", "version": "v2",
    "canonical_service": "backend", "canonical_revision": "v2", "cluster": "Kubernetes",
    "principal": "unknown",
}
UNKNOWN = {
    "workload": "unknown", "workload_namespace": "unknown", "app": "unknown",
    "version": "unknown", "canonical_service": "unknown", "canonical_revision": "latest",
    "cluster": "unknown", "principal": "unknown",
}


def _side(prefix: str, values: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _series(reporter: str, src: dict[str, str], dst: dict[str, str],
            **rest: str) -> dict[str, str]:
    return {
        "reporter": reporter, **_side("source", src), **_side("destination", dst),
        "destination_service": SERVICE, "destination_service_name": "backend",
        "destination_service_namespace": "default", **rest,
    }


# ----------------------------------------------------------------------------- Envoy configs


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _render(base: dict[str, Any], *, admin: int, listeners: dict[str, int],
            endpoints: dict[str, int], node: dict[str, Any] | None = None) -> str:
    """The shipped config with ports, the node identity and a short flush interval swapped."""
    config = copy.deepcopy(base)
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = listeners[listener["name"]]
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] in endpoints:
            (lb,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            lb["endpoint"]["address"]["socket_address"]["port_value"] = endpoints[cluster["name"]]
    for item in _walk(config):
        if "buffer_flush_interval" in item:
            item["buffer_flush_interval"] = "0.05s"
    if node is not None:
        config["node"] = node
        header = encode_peer_header(node["metadata"])
        for item in _walk(config):
            if item.get("key") == "x-mixer-peer-metadata":
                item["value"] = header
            elif item.get("key") == "x-mixer-peer-metadata-id":
                item["value"] = node["id"]
            elif "context_extensions" in item:
                item["context_extensions"] = {"namespace": "default", "label.app": "backend",
                                              "label.version": "v2"}
            elif "services" in item:
                item["services"] = [BACKEND_SERVICE]
    return yaml.safe_dump(config, sort_keys=False)


# ----------------------------------------------------------------------------- in-test peers


class _DenyPath(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """A trivial ext_authz: 403 for paths under /denied, OK otherwise."""

    async def Check(self, request: Any, context: Any) -> Any:
        path = request.attributes.request.http.path
        code = 7 if path.startswith("/denied") else 0
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code))


async def _app(port: int) -> web.AppRunner:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def fail(_: web.Request) -> web.Response:
        return web.Response(text="boom", status=503)

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/fail", fail)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(1024)
    writer.write(data)
    await writer.drain()
    writer.close()


async def _scrape(admin_port: int, path: str = "/metrics") -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{admin_port}{path}") as resp:
        assert resp.status == 200
        return await resp.text()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
           labels: dict[str, str]) -> float | None:
    found = [v for lbls, v in samples.get(name, []) if lbls == labels]
    return found[0] if found else None


async def test_istio_metrics_from_two_real_sidecars(
    start_envoy: Callable[..., procs.ManagedProcess], free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    """Both reporters' series carry the right names, full label sets, values and counts."""
    ports = {name: free_port() for name in (
        "app", "echo", "authz", "a_admin", "a_out_http", "a_out_tcp", "a_in_http", "a_in_tcp",
        "b_admin", "b_out_http", "b_out_tcp", "b_in_http", "b_in_tcp")}
    app = await _app(ports["app"])
    echo = await asyncio.start_server(_echo, "127.0.0.1", ports["echo"])
    authz = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(_DenyPath(), authz)
    authz.add_insecure_port(f"127.0.0.1:{ports['authz']}")
    await authz.start()
    config = tmp_path / "telemetry.yaml"
    config.write_text("graph:\n  window_seconds: 60\n")
    telemetry = build(config)
    running = await start(telemetry.service, ServerSettings(
        service="telemetry", listen="127.0.0.1:0", admin="127.0.0.1:0"))
    try:
        base = yaml.safe_load(SHIPPED.read_text())
        mixer = {"mixer_telemetry": running.grpc_port, "mixer_authz": ports["authz"]}
        backend_cfg = _render(
            base, admin=ports["b_admin"],
            listeners={"outbound_http": ports["b_out_http"], "outbound_tcp": ports["b_out_tcp"],
                       "inbound_http": ports["b_in_http"], "inbound_tcp": ports["b_in_tcp"]},
            endpoints={**mixer, "inbound|8080||": ports["app"],
                       "inbound|9090||": running.grpc_port, "inbound|9000||": ports["echo"]},
            node={"id": BACKEND_ID, "cluster": "backend.default", "metadata": BACKEND_META},
        )
        frontend_cfg = _render(
            base, admin=ports["a_admin"],
            listeners={"outbound_http": ports["a_out_http"], "outbound_tcp": ports["a_out_tcp"],
                       "inbound_http": ports["a_in_http"], "inbound_tcp": ports["a_in_tcp"]},
            endpoints={**mixer,
                       f"outbound|8080||{SERVICE}": ports["b_in_http"],
                       f"outbound|9090||{SERVICE}": ports["b_in_http"],
                       f"outbound|9000||{SERVICE}": ports["b_in_tcp"]},
        )
        await asyncio.to_thread(start_envoy, backend_cfg, ports["b_admin"], name="backend")
        await asyncio.to_thread(start_envoy, frontend_cfg, ports["a_admin"], name="frontend")

        # --- traffic: frontend app -> frontend sidecar (outbound) -> backend sidecar (inbound)
        url = f"http://127.0.0.1:{ports['a_out_http']}"
        codes = []
        async with aiohttp.ClientSession(headers={"Host": SERVICE}) as session:
            for path in ("/", "/", "/", "/fail", "/denied"):
                async with session.get(url + path) as resp:
                    codes.append(resp.status)
        assert codes == [200, 200, 200, 503, 403]
        # Straight to the backend's inbound listener, Host 127.0.0.1:PORT, and denied: no
        # upstream cluster, so destination_service falls back to the Host header, verbatim.
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{ports['b_in_http']}/denied") as resp:
            assert resp.status == 403
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{ports['a_out_http']}",
                options=[("grpc.default_authority", f"{SERVICE}:9090")]) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["a_out_tcp"])
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(1024), 5) == b"ping"
        writer.close()
        await writer.wait_closed()

        # --- wait for both sidecars' entries: 6 HTTP entries each (+1 direct), TCP open+close
        registry = telemetry.registry
        for _ in range(200):
            http = registry.get_sample_value(
                "mixer_telemetry_entries_processed_total", {"type": "http"}) or 0
            closed = sum(
                registry.get_sample_value("istio_tcp_connections_closed_total", labels) or 0
                for labels in _tcp_series())
            if http >= 13 and closed >= 2:
                break
            await asyncio.sleep(0.05)
        text = await _scrape(running.admin_port)
        samples = _samples(text)
        graph = json.loads(await _scrape(running.admin_port, "/graph"))
    finally:
        await running.stop(0)
        await authz.stop(0)
        echo.close()
        await app.cleanup()

    # Every metric present, with exactly Istio's label set (plus `le` on buckets).
    for name, (kind, labels) in METRICS.items():
        sample_name = f"{name}_bucket" if kind == "histogram" else name
        assert samples.get(sample_name), f"{name} missing"
        for lbls, _ in samples[sample_name]:
            got = set(lbls) - ({"le"} if kind == "histogram" else set())
            assert got == labels, name
        if kind == "histogram":
            assert samples.get(f"{name}_sum") and samples.get(f"{name}_count"), name

    # Client side (reporter=source): destination identity from the backend's response header.
    source = _series("source", FRONTEND, BACKEND, request_protocol="http", response_flags="-",
                     connection_security_policy="unknown", grpc_response_status="")
    assert _value(samples, "istio_requests_total", {**source, "response_code": "200"}) == 3
    assert _value(samples, "istio_requests_total", {**source, "response_code": "503"}) == 1
    # Server side (reporter=destination): plain text, so the frontend's request header is not
    # believed (anyone can send it straight to a sidecar): the source is unknown, "none".
    dest = _series("destination", UNKNOWN, BACKEND, request_protocol="http",
                   response_flags="-", connection_security_policy="none",
                   grpc_response_status="")
    assert _value(samples, "istio_requests_total", {**dest, "response_code": "200"}) == 3
    assert _value(samples, "istio_requests_total", {**dest, "response_code": "503"}) == 1
    assert _value(samples, "istio_request_duration_milliseconds_count",
                  {**dest, "response_code": "200"}) == 3
    # The ext_authz denial: 403 with Envoy's UAEX flag where it happened. Envoy logs no
    # upstream cluster for it, so the service is the Host header, verbatim for the name too.
    assert _value(samples, "istio_requests_total",
                  {**dest, "response_code": "403", "response_flags": "UAEX",
                   "destination_service_name": SERVICE}) == 1
    denied_at_source = [v for lbls, v in samples["istio_requests_total"]
                        if lbls["reporter"] == "source" and lbls["response_code"] == "403"]
    assert denied_at_source == [1]

    # The Host-header fallback keeps host:port, for the service and its name (as Istio).
    host = f"127.0.0.1:{ports['b_in_http']}"
    direct = {**_series("destination", UNKNOWN, BACKEND, request_protocol="http",
                        response_flags="UAEX", connection_security_policy="none",
                        grpc_response_status="", response_code="403"),
              "destination_service": host, "destination_service_name": host}
    assert _value(samples, "istio_requests_total", direct) == 1

    # The exposition line itself: Istio's label order, not alphabetical.
    assert (
        'istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown",'
        'source_canonical_service="unknown",source_canonical_revision="latest",'
        'source_workload_namespace="unknown",source_principal="unknown",source_app="unknown",'
        'source_version="unknown",source_cluster="unknown",destination_workload="backend",'
        'destination_workload_namespace="default",destination_principal="unknown",'
        'destination_app="backend",destination_version="v2",'
        'destination_service="backend.default.svc.cluster.local",'
        'destination_canonical_service="backend",destination_canonical_revision="v2",'
        'destination_service_name="backend",destination_service_namespace="default",'
        'destination_cluster="Kubernetes",request_protocol="tcp",response_flags="-",'
        'connection_security_policy="none"} 1.0'
    ) in text.splitlines()

    # gRPC: protocol, status and message counts on both sides.
    for reporter, policy, client in (("source", "unknown", FRONTEND),
                                     ("destination", "none", UNKNOWN)):
        grpc_series = _series(reporter, client, BACKEND, request_protocol="grpc",
                              response_flags="-", connection_security_policy=policy)
        assert _value(samples, "istio_requests_total",
                      {**grpc_series, "response_code": "200", "grpc_response_status": "0"}) == 1
        peer = _series(reporter, client, BACKEND)
        assert _value(samples, "istio_request_messages_total", peer) == 1, reporter
        assert _value(samples, "istio_response_messages_total", peer) == 1, reporter

    # The graph: the client's view names both ends; the server's (plain text) an unknown
    # client, which also sent the direct request.
    edges = {(e["source"], e["destination"], e["protocol"]): e for e in graph["edges"]}
    http_edge = edges[("frontend.default", "backend.default", "http")]
    assert (http_edge["requests"], http_edge["error_rate"], http_edge["client_error_rate"]) == (
        5, 0.2, 0.2)
    assert http_edge["reporter"] == "source" and http_edge["mtls"] is None
    assert http_edge["p50_ms"] is not None and http_edge["p99_ms"] >= http_edge["p50_ms"]
    server_edge = edges[("unknown", "backend.default", "http")]
    assert (server_edge["reporter"], server_edge["requests"], server_edge["mtls"]) == (
        "destination", 6, False)
    assert edges[("frontend.default", "backend.default", "grpc")]["requests"] == 1
    assert {n["id"] for n in graph["nodes"]} >= {"frontend.default", "backend.default"}

    # TCP: no metadata exchange without mTLS, so the peer is unknown (as in Istio): the client
    # side's destination_service_namespace is the (unknown) peer's; the server side's
    # destination_service is the inbound cluster's service (its istio.services metadata).
    tcp_source, tcp_dest = _tcp_series()
    assert tcp_source["destination_service_namespace"] == "unknown"
    assert tcp_dest["destination_service"] == SERVICE
    for series in (tcp_source, tcp_dest):
        assert _value(samples, "istio_tcp_connections_opened_total", series) == 1
        assert _value(samples, "istio_tcp_connections_closed_total", series) == 1
        assert _value(samples, "istio_tcp_received_bytes_total", series) == 4
        assert _value(samples, "istio_tcp_sent_bytes_total", series) == 4


def _tcp_series() -> list[dict[str, str]]:
    source = _series("source", FRONTEND, UNKNOWN, request_protocol="tcp", response_flags="-",
                     connection_security_policy="unknown")
    source["destination_service_namespace"] = "unknown"
    dest = _series("destination", UNKNOWN, BACKEND, request_protocol="tcp", response_flags="-",
                   connection_security_policy="none")
    return [source, dest]


def test_shipped_config_validates_in_envoy() -> None:
    """envoy-configs/telemetry.yaml, unmodified, passes `envoy --mode validate`."""
    result = procs.validate_envoy_config(SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
