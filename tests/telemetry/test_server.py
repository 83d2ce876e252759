"""The ALS servicer over a real in-process gRPC server and stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import json_format, struct_pb2
from prometheus_client import generate_latest

from envoy_mixer.runtime.service import RunningService, start
from envoy_mixer.runtime.settings import ServerSettings
from telemetry.app import Telemetry, build
from telemetry.entries import TcpEvent
from telemetry.identity import UNKNOWN_NODE
from telemetry.server import http_entry, tcp_entry

BACKEND_ID = "sidecar~10.0.0.2~backend-5f6-xyz.shop~shop.svc.cluster.local"
BACKEND_META = {
    "NAME": "backend-5f6-xyz", "NAMESPACE": "shop", "WORKLOAD_NAME": "backend",
    "CLUSTER_ID": "Kubernetes", "LABELS": {"app": "backend", "version": "v2"},
}


SERVICES_JSON = (
    '[{"host":"backend.shop.svc.cluster.local","name":"backend","namespace":"shop"}]')


def _identifier(node_id: str, meta: dict[str, object], log_name: str = "inbound"):
    node = base_pb2.Node(id=node_id, cluster="backend.shop")
    node.metadata.CopyFrom(json_format.ParseDict(meta, struct_pb2.Struct()))
    return als_pb2.StreamAccessLogsMessage.Identifier(node=node, log_name=log_name)


def _http(code: int, cluster: str = "inbound|8080||", **request_headers: str):
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.upstream_cluster = cluster
    entry.common_properties.duration.FromMilliseconds(12)
    entry.common_properties.downstream_wire_bytes_received = 120
    entry.common_properties.downstream_wire_bytes_sent = 340
    entry.request.authority = "backend.shop.svc.cluster.local:8080"
    # The inbound cluster's istio.services metadata, as Envoy's custom tag renders it.
    entry.common_properties.custom_tags["istio.services"] = SERVICES_JSON
    entry.request.request_method = base_pb2.GET
    for k, v in request_headers.items():
        entry.request.request_headers[k.replace("_", "-")] = v
    if code:
        entry.response.response_code.value = code
    return entry


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Telemetry, RunningService]]:
    """The telemetry service in-process on free ports, with a short stream max age."""
    config = tmp_path / "telemetry.yaml"
    config.write_text("streams:\n  max_stream_age_seconds: 0\n")
    telemetry = build(config)
    settings = ServerSettings(service="telemetry", listen="127.0.0.1:0", admin="127.0.0.1:0")
    service = await start(telemetry.service, settings)
    try:
        yield telemetry, service
    finally:
        await service.stop(0)


async def _stream(port: int, messages: list[als_pb2.StreamAccessLogsMessage]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = als_pb2_grpc.AccessLogServiceStub(channel)

        async def gen() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            for m in messages:
                yield m

        await stub.StreamAccessLogs(gen())


async def _wait_processed(telemetry: Telemetry, count: int) -> None:
    for _ in range(100):
        processed = telemetry.registry.get_sample_value(
            "mixer_telemetry_entries_processed_total", {"type": "http"}) or 0
        if processed >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {processed} entries processed")


async def test_identifier_is_kept_for_the_whole_stream(
    running: tuple[Telemetry, RunningService],
) -> None:
    """Batches after the first message are attributed to the node from the first message."""
    telemetry, service = running
    first = als_pb2.StreamAccessLogsMessage(identifier=_identifier(BACKEND_ID, BACKEND_META))
    first.http_logs.log_entry.append(_http(200))
    second = als_pb2.StreamAccessLogsMessage()
    second.http_logs.log_entry.extend([_http(200), _http(503)])
    await _stream(service.grpc_port, [first, second])
    await _wait_processed(telemetry, 3)
    total = 0.0
    for code, want in (("200", 2), ("503", 1)):
        value = telemetry.registry.get_sample_value("istio_requests_total", {
            **_inbound_labels(), "response_code": code})
        assert value == want, code
        total += value
    assert total == 3


def _inbound_labels() -> dict[str, str]:
    return {
        "reporter": "destination", "source_workload": "unknown",
        "source_workload_namespace": "unknown", "source_principal": "unknown",
        "source_app": "unknown", "source_version": "unknown",
        "source_canonical_service": "unknown", "source_canonical_revision": "latest",
        "source_cluster": "unknown", "destination_workload": "backend",
        "destination_workload_namespace": "shop", "destination_principal": "unknown",
        "destination_app": "backend", "destination_version": "v2",
        "destination_service": "backend.shop.svc.cluster.local",
        "destination_service_name": "backend", "destination_service_namespace": "shop",
        "destination_canonical_service": "backend", "destination_canonical_revision": "v2",
        "destination_cluster": "Kubernetes", "request_protocol": "http", "response_flags": "-",
        "connection_security_policy": "none", "grpc_response_status": "",
    }


async def test_stream_without_identifier_reports_unknown_reporter_identity(
    running: tuple[Telemetry, RunningService],
) -> None:
    """A stream that never identifies its node still counts, with unknown local identity."""
    telemetry, service = running
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.append(_http(200))
    await _stream(service.grpc_port, [message])
    await _wait_processed(telemetry, 1)
    text = generate_latest(telemetry.registry).decode()
    assert 'destination_workload="unknown"' in text
    assert 'reporter="destination"' in text


async def test_stream_older_than_max_age_is_ended(tmp_path: Path) -> None:
    """With a tiny max stream age the server ends the stream itself and counts it."""
    config = tmp_path / "telemetry.yaml"
    config.write_text("streams:\n  max_stream_age_seconds: 0.001\n")
    telemetry = build(config)
    settings = ServerSettings(service="telemetry", listen="127.0.0.1:0", admin="127.0.0.1:0")
    service = await start(telemetry.service, settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)

            async def endless() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
                while True:
                    message = als_pb2.StreamAccessLogsMessage()
                    message.http_logs.log_entry.append(_http(200))
                    yield message
                    await asyncio.sleep(0.01)

            response = await asyncio.wait_for(stub.StreamAccessLogs(endless()), 5)
        assert response == als_pb2.StreamAccessLogsResponse()
        assert telemetry.registry.get_sample_value(
            "mixer_telemetry_streams_closed_total", {"reason": "max_age"}) == 1
    finally:
        await service.stop(0)


def test_full_backlog_drops_and_counts(tmp_path: Path) -> None:
    """When the backlog is full new batches are dropped and counted, never awaited."""
    config = tmp_path / "telemetry.yaml"
    config.write_text("streams:\n  queue_max_batches: 1\n")
    telemetry = build(config)
    assert telemetry.service.reloader is not None
    telemetry.service.reloader.reload()
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend([_http(200), _http(200)])
    servicer = telemetry.servicer
    servicer.receive(message, UNKNOWN_NODE)
    servicer.receive(message, UNKNOWN_NODE)
    assert telemetry.servicer.backlog == 2
    assert telemetry.registry.get_sample_value(
        "mixer_telemetry_entries_dropped_total", {"reason": "backlog_full"}) == 2
    assert telemetry.registry.get_sample_value("mixer_telemetry_backlog_entries") == 2
    telemetry.servicer.process_pending()
    assert telemetry.registry.get_sample_value("mixer_telemetry_backlog_entries") == 0
    assert telemetry.registry.get_sample_value(
        "mixer_telemetry_entries_processed_total", {"type": "http"}) == 2


def test_http_entry_maps_fields_and_flags() -> None:
    """Protobuf → domain: codes, sizes, duration, short flags (UAEX only for EXTERNAL_SERVICE)."""
    pb = _http(403, content_type="application/grpc")
    pb.common_properties.response_flags.unauthorized_details.reason = (
        accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE)
    pb.common_properties.response_flags.upstream_connection_failure = True
    pb.common_properties.tls_properties.peer_certificate_properties.subject_alt_name.add(
        uri="spiffe://cluster.local/ns/shop/sa/frontend")
    pb.response.response_trailers["grpc-status"] = "7"
    entry = http_entry(pb)
    assert (entry.response_code, entry.request_bytes, entry.response_bytes) == (403, 120, 340)
    assert entry.duration_ms == 12
    assert entry.response_flags == "UF,UAEX"
    assert entry.method == "GET"
    assert entry.request_headers == {"content-type": "application/grpc"}
    assert entry.response_trailers == {"grpc-status": "7"}
    assert entry.tls is not None and entry.tls.peer_uri.endswith("/sa/frontend")


def test_tcp_entry_maps_event_types() -> None:
    """access_log_type picks open/periodic/close; an untyped entry is a connection end."""
    pb = accesslog_pb2.TCPAccessLogEntry()
    pb.connection_properties.received_bytes = 10
    pb.connection_properties.sent_bytes = 20
    assert tcp_entry(pb).event is TcpEvent.CLOSE
    pb.common_properties.access_log_type = accesslog_pb2.TcpUpstreamConnected
    assert tcp_entry(pb).event is TcpEvent.OPEN
    pb.common_properties.access_log_type = accesslog_pb2.TcpPeriodic
    entry = tcp_entry(pb)
    assert (entry.event, entry.received_bytes, entry.sent_bytes) == (TcpEvent.PERIODIC, 10, 20)


@pytest.mark.parametrize(("tag", "service"), [
    (SERVICES_JSON, ("backend.shop.svc.cluster.local", "backend")),
    ('[{"host":"db.shop.svc.cluster.local"}]', ("db.shop.svc.cluster.local", "")),
    ("", ("", "")),
    ("not json", ("", "")),
    ("[]", ("", "")),
    ('{"host":"x"}', ("", "")),
    ('[{"host":5}]', ("", "")),
])
def test_cluster_services_tag_gives_the_service(tag: str, service: tuple[str, str]) -> None:
    """The istio.services tag's first entry is the service; anything malformed is no service."""
    pb = accesslog_pb2.TCPAccessLogEntry()
    if tag:
        pb.common_properties.custom_tags["istio.services"] = tag
    entry = tcp_entry(pb)
    assert (entry.service_host, entry.service_name) == service
    http = _http(200)
    assert (http_entry(http).service_host, http_entry(http).service_name) == (
        "backend.shop.svc.cluster.local", "backend")


def test_reload_swaps_config_and_keeps_old_on_error(tmp_path: Path) -> None:
    """A good edit reconfigures the pipeline; a bad edit keeps the running config."""
    config = tmp_path / "telemetry.yaml"
    config.write_text("graph: {window_seconds: 30}\n")
    telemetry = build(config)
    reloader = telemetry.service.reloader
    assert reloader is not None and reloader.reload()
    assert telemetry.pipeline.graph.window == 30
    config.write_text("metrics:\n  overrides:\n    - match: REQUEST_SIZE\n      disabled: true\n")
    assert reloader.reload()
    assert telemetry.pipeline.recorder.stores.get("istio_request_bytes") is None
    config.write_text("graph: {window_seconds: -1}\n")
    assert not reloader.reload()
    assert telemetry.snapshot.get().disabled == {"istio_request_bytes"}
    assert reloader.last_error is not None and reloader.last_error.line == 1


@pytest.mark.slow
def test_mixer_telemetry_subprocess_serves_admin_routes(
    start_mixer, free_port, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """`mixer telemetry --config examples/telemetry.yaml` serves /config, /graph and /metrics."""
    import json
    import urllib.request

    repo = Path(__file__).resolve().parents[2]
    grpc_port, admin = free_port(), free_port()
    start_mixer(["telemetry", "--config", str(repo / "examples" / "telemetry.yaml"),
                 "--listen", f"127.0.0.1:{grpc_port}", "--admin", f"127.0.0.1:{admin}"], admin)

    def get(path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    described = json.loads(get("/config"))["config"]
    assert described["source"] == "telemetry.yaml"
    assert [len(m["labels"]) for m in described["metrics"]] == [25] * 4 + [20] * 2 + [23] * 4
    assert json.loads(get("/graph"))["edges"] == []
    assert "mixer_telemetry_entries_received_total" in get("/metrics")


async def test_garbage_stream_fails_alone(running: tuple[Telemetry, RunningService]) -> None:
    """Undecodable bytes end that stream with an error; the next stream is served normally."""
    telemetry, service = running
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        raw = channel.stream_unary(
            "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
            request_serializer=None, response_deserializer=None)

        async def garbage() -> AsyncIterator[bytes]:
            yield b"\xff\xff\xff\xff not a protobuf"

        with pytest.raises(grpc.aio.AioRpcError):
            await raw(garbage(), timeout=5)
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.append(_http(200))
    await _stream(service.grpc_port, [als_pb2.StreamAccessLogsMessage(), message])
    await _wait_processed(telemetry, 1)


def test_entry_that_fails_is_counted_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry the pipeline cannot handle is counted as malformed; its batch-mates still count."""
    telemetry = build(None)
    assert telemetry.service.reloader is not None
    telemetry.service.reloader.reload()
    original = telemetry.pipeline.process_http
    calls = []

    def flaky(entry, node):  # type: ignore[no-untyped-def]
        calls.append(entry)
        if len(calls) == 2:
            raise ValueError("boom")
        original(entry, node)

    monkeypatch.setattr(telemetry.pipeline, "process_http", flaky)
    message = als_pb2.StreamAccessLogsMessage()
    message.http_logs.log_entry.extend([_http(200), _http(200), _http(200)])
    telemetry.servicer.receive(message, UNKNOWN_NODE)
    telemetry.servicer.process_pending()
    registry = telemetry.registry
    assert registry.get_sample_value(
        "mixer_telemetry_entries_dropped_total", {"reason": "malformed"}) == 1
    assert registry.get_sample_value(
        "mixer_telemetry_entries_processed_total", {"type": "http"}) == 2


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MIXER_TELEMETRY_LISTEN", "nowhere", "argument --listen: expected HOST:PORT, got 'nowhere'"),
    ("MIXER_TELEMETRY_GRACE", "soon", "argument --grace: invalid float value: 'soon'"),
])
def test_bad_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str,
    value: str, message: str,
) -> None:
    """`mixer telemetry` with an unusable env value: one error on stderr, exit 2, no traceback."""
    from telemetry.cli import main

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
