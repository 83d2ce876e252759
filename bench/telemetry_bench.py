"""Telemetry benchmark: access-log entries ingested per core, and Envoy with ALS vs a file log.

Three measurements, all bounded in time:

1. In-process, one thread (= one core): the pure pipeline (domain entry -> labels -> series,
   graph) and the servicer path (serialized ALS message -> protobuf -> domain -> pipeline).
2. ``mixer telemetry`` as a subprocess fed over gRPC by a separate client process with
   pre-serialized 50-entry batches: entries processed per second of the service's own CPU.
3. One Envoy (``--concurrency 1``) with three listeners answering 200 directly: no access log,
   a file access log, and the gRPC access log to ``mixer telemetry``; ``wrk`` (127.0.0.1 only)
   against each, alternating, in the same run.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

from bench.client import read_payloads, write_payloads
from bench.harness import cpu_seconds, median, print_table
from envoy_mixer.dev import procs

ENTRIES_PER_BATCH = 50


# ----------------------------------------------------------------------------- payloads


def _batches(count: int) -> list[bytes]:
    """Serialized StreamAccessLogsMessage batches: both reporters, a few peers and codes."""
    from envoy.config.core.v3 import base_pb2
    from envoy.data.accesslog.v3 import accesslog_pb2
    from envoy.service.accesslog.v3 import als_pb2
    from google.protobuf import json_format, struct_pb2

    from telemetry.identity import encode_peer_header

    def meta(workload: str, version: str) -> dict[str, object]:
        return {"NAME": f"{workload}-0", "NAMESPACE": "default", "WORKLOAD_NAME": workload,
                "CLUSTER_ID": "Kubernetes", "LABELS": {"app": workload, "version": version}}

    peers = [encode_peer_header(meta(f"client{i}", "v1")) for i in range(4)]
    out = []
    for b in range(count):
        message = als_pb2.StreamAccessLogsMessage()
        if b == 0:
            node = base_pb2.Node(id="sidecar~127.0.0.1~backend-0.default~default.svc.cluster.local")
            node.metadata.CopyFrom(json_format.ParseDict(meta("backend", "v2"),
                                                         struct_pb2.Struct()))
            message.identifier.node.CopyFrom(node)
            message.identifier.log_name = "inbound"
        for i in range(ENTRIES_PER_BATCH):
            n = b * ENTRIES_PER_BATCH + i
            entry = message.http_logs.log_entry.add()
            common = entry.common_properties
            common.upstream_cluster = "inbound|8080||"
            common.start_time.FromMilliseconds(1_700_000_000_000 + n)
            common.duration.FromMicroseconds(300 + (n * 37) % 20000)
            common.downstream_wire_bytes_received = 200 + n % 50
            common.downstream_wire_bytes_sent = 500 + n % 300
            common.downstream_remote_address.socket_address.address = "10.0.0.7"
            common.downstream_remote_address.socket_address.port_value = 40000 + n % 1000
            entry.protocol_version = accesslog_pb2.HTTPAccessLogEntry.HTTP11
            request = entry.request
            request.request_method = base_pb2.GET
            request.scheme = "http"
            request.authority = "backend.default.svc.cluster.local:8080"
            request.path = f"/items/{n % 100}"
            request.user_agent = "bench/1.0"
            request.request_id = f"req-{n}"
            request.request_headers["x-mixer-peer-metadata"] = peers[n % len(peers)]
            request.request_headers["content-type"] = "application/json"
            entry.response.response_code.value = (200, 200, 200, 404, 503)[n % 5]
            entry.response.response_code_details = "via_upstream"
        out.append(message.SerializeToString())
    return out


# ----------------------------------------------------------------------------- 1. in-process


def in_process(seconds: float = 2.0) -> list[list[object]]:
    """Entries per CPU-second on one thread: pure pipeline, and servicer path from bytes.

    CPU time (not wall time) of this single-threaded loop, so other load on the machine does
    not count against us: the figure is what one core sustains.
    """
    from envoy.service.accesslog.v3 import als_pb2
    from prometheus_client import CollectorRegistry

    from envoy_mixer.common.snapshot import Snapshot
    from telemetry.config import default_config
    from telemetry.pipeline import Pipeline
    from telemetry.server import AccessLogServicer, http_entry, identifier_node

    payloads = _batches(40)
    first = als_pb2.StreamAccessLogsMessage.FromString(payloads[0])
    node = identifier_node(first.identifier)
    entries = [http_entry(pb) for p in payloads
               for pb in als_pb2.StreamAccessLogsMessage.FromString(p).http_logs.log_entry]

    pipeline = Pipeline(default_config(), CollectorRegistry())
    done = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        for entry in entries:
            pipeline.process_http(entry, node)
        done += len(entries)
    pure = done / (time.process_time() - start)

    registry = CollectorRegistry()
    snapshot = Snapshot(default_config())
    servicer = AccessLogServicer(snapshot, Pipeline(default_config(), registry), registry)
    done = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        for payload in payloads:
            servicer.receive(als_pb2.StreamAccessLogsMessage.FromString(payload), node)
            servicer.process_pending()
        done += len(payloads) * ENTRIES_PER_BATCH
    servicer_rate = done / (time.process_time() - start)
    return [["pipeline (domain entry -> series, graph)", pure, 1e6 / pure],
            ["servicer (bytes -> protobuf -> domain -> pipeline)", servicer_rate,
             1e6 / servicer_rate]]


# ----------------------------------------------------------------------------- 2. over gRPC


async def _stream(target: str, payloads: list[bytes], seconds: float, streams: int) -> int:
    import grpc

    sent = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_unary(
            "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
            request_serializer=None, response_deserializer=None)
        await channel.channel_ready()
        deadline = time.monotonic() + seconds

        async def one() -> None:
            nonlocal sent

            async def gen() -> AsyncIterator[bytes]:
                nonlocal sent
                i = 0
                while time.monotonic() < deadline:
                    yield payloads[i % len(payloads)]
                    sent += ENTRIES_PER_BATCH
                    i += 1
                    if i % 8 == 0:
                        await asyncio.sleep(0)  # let the channel flush

            await call(gen(), timeout=seconds + 30)

        await asyncio.gather(*(one() for _ in range(streams)))
    return sent


def _metric(admin: int, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def start_telemetry(workdir: Path) -> tuple[procs.ManagedProcess, int, int]:
    """``mixer telemetry`` with defaults on free ports."""
    port, admin = procs.free_port(), procs.free_port()
    proc = procs.mixer_process(
        ["telemetry", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--log-level", "warning"], admin, workdir / "telemetry.log").start()
    proc.wait_ready(30)
    return proc, port, admin


def over_grpc(workdir: Path, seconds: float = 4.0) -> list[list[object]]:
    """Entries processed per CPU-second of the service, fed by a separate client process."""
    payload_file = workdir / "als.bin"
    write_payloads(payload_file, _batches(40))
    proc, port, admin = start_telemetry(workdir)
    try:
        assert proc.proc is not None
        rows = []
        for streams in (1, 2):
            processed0 = _metric(admin, "mixer_telemetry_entries_processed_total", 'type="http"')
            dropped0 = _metric(admin, "mixer_telemetry_entries_dropped_total",
                               'reason="backlog_full"')
            cpu0 = cpu_seconds(proc.proc.pid)
            start = time.monotonic()
            out = subprocess.run(
                [sys.executable, "-m", "bench.telemetry_bench", "--client", f"127.0.0.1:{port}",
                 str(payload_file), str(seconds), str(streams)],
                capture_output=True, text=True, check=True, timeout=seconds + 60)
            sent = int(out.stdout.strip().splitlines()[-1])
            for _ in range(200):  # let the backlog drain before reading the counters
                if _metric(admin, "mixer_telemetry_backlog_entries") == 0:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - start
            cpu = cpu_seconds(proc.proc.pid) - cpu0
            processed = _metric(admin, "mixer_telemetry_entries_processed_total",
                                'type="http"') - processed0
            dropped = _metric(admin, "mixer_telemetry_entries_dropped_total",
                              'reason="backlog_full"') - dropped0
            rows.append([f"mixer telemetry, {streams} stream(s)", sent, processed,
                         int(dropped), processed / elapsed, processed / cpu if cpu else 0.0])
        return rows
    finally:
        proc.stop()


def client_main(target: str, payload_file: str, seconds: str, streams: str) -> None:
    """The load client (separate process): prints the number of entries sent."""
    import uvloop

    sent = uvloop.run(_stream(target, read_payloads(Path(payload_file)), float(seconds),
                              int(streams)))
    print(sent)


# ----------------------------------------------------------------------------- 3. Envoy + wrk

_TYPES = "type.googleapis.com/envoy.extensions."
_HCM = _TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager"
_ALS_TYPE = _TYPES + "access_loggers.grpc.v3.HttpGrpcAccessLogConfig"

_LISTENER = """
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{access_log}"""

_FILE_LOG = """          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
"""

_ALS_LOG = """          access_log:
          - name: envoy.access_loggers.http_grpc
            typed_config:
              "@type": ALS_TYPE
              common_config:
                log_name: inbound
                transport_api_version: V3
                grpc_service: {envoy_grpc: {cluster_name: mixer_telemetry}, timeout: 1s}
                buffer_flush_interval: 1s
                buffer_size_bytes: 65536
              additional_request_headers_to_log: [content-type, x-mixer-peer-metadata]
""".replace("ALS_TYPE", _ALS_TYPE)

_ENVOY = """node:
  id: sidecar~127.0.0.1~bench-0.default~default.svc.cluster.local
  metadata: {{NAMESPACE: default, WORKLOAD_NAME: bench, LABELS: {{app: bench}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{listeners}
  clusters:
  - name: mixer_telemetry
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: mixer_telemetry
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {als}}}}}}}
"""


def _wrk(port: int, seconds: float) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{seconds:.0f}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return rps, float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")


def envoy_throughput(workdir: Path, seconds: float = 4.0, rounds: int = 2) -> list[list[object]]:
    """wrk against Envoy listeners without log, with a file log and with ALS, alternating."""
    telemetry, als_port, telemetry_admin = start_telemetry(workdir)
    ports = {"no access log": procs.free_port(), "file access log": procs.free_port(),
             "gRPC ALS -> mixer telemetry": procs.free_port()}
    logs = {"no access log": "", "file access log": _FILE_LOG.format(path=workdir / "access.log"),
            "gRPC ALS -> mixer telemetry": _ALS_LOG}
    listeners = "".join(_LISTENER.format(name=f"l{i}", port=ports[k], access_log=logs[k],
                                          hcm=_HCM)
                        for i, k in enumerate(ports))
    admin = procs.free_port()
    config = workdir / "envoy.yaml"
    config.write_text(_ENVOY.format(admin=admin, listeners=listeners, als=als_port))
    envoy = procs.envoy_process(config, admin, workdir / "envoy.log").start()
    try:
        envoy.wait_ready(30)
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in ports}
        for port in ports.values():  # warm-up
            _wrk(port, 1)
        for _ in range(rounds):
            for name, port in ports.items():
                results[name].append(_wrk(port, seconds))
        time.sleep(1.5)  # last ALS flush
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=grpc_access_log",
                                    timeout=5) as resp:
            stats = dict(line.split(": ", 1) for line in resp.read().decode().splitlines()
                         if ": " in line)
        processed = _metric(telemetry_admin, "mixer_telemetry_entries_processed_total",
                            'type="http"')
        written = sum(int(v) for k, v in stats.items() if k.endswith("logs_written"))
        dropped = sum(int(v) for k, v in stats.items() if k.endswith("logs_dropped"))
        rows: list[list[object]] = []
        for name, samples in results.items():
            rps = median([s[0] for s in samples])
            p99 = median([s[1] for s in samples])
            extra = (f"Envoy logs_written {written:,}, logs_dropped {dropped:,}; "
                     f"telemetry processed {processed:,.0f}") if "ALS" in name else ""
            rows.append([name, rps, p99, extra])
        return rows
    finally:
        envoy.stop()
        telemetry.stop()


def main() -> None:
    """Print the three tables."""
    print_table("Telemetry ingest, in-process, one thread (per CPU-second)",
                ("path", "entries/s", "CPU µs/entry"), in_process())
    workdir = Path(tempfile.mkdtemp(prefix="mixer-telemetry-bench-"))
    print_table(
        "Telemetry ingest over gRPC (50-entry batches, separate client process)",
        ("server", "entries sent", "processed", "dropped (backlog full)", "processed/s",
         "entries per CPU-second"),
        over_grpc(workdir))
    if shutil.which("wrk") is None:
        print("\nwrk not found: skipping Envoy throughput (make bench-tools installs it)")
        return
    print_table("Envoy --concurrency 1, direct 200, wrk -t1 -c50 (same run, median of rounds)",
                ("access log", "requests/s", "p99 ms", "notes"), envoy_throughput(workdir))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--client":
        client_main(*sys.argv[2:])
    else:
        main()
