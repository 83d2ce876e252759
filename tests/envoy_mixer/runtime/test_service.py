"""The shared server lifecycle: health, admin routes, readiness and graceful shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.dev import procs
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.service import Service, start
from envoy_mixer.runtime.settings import ServerSettings


def _service(path: Path) -> Service:
    def load() -> str:
        text = path.read_text()
        if "bad" in text:
            raise ConfigError("bad content", file=path.name, line=1, field="x")
        return text.strip()

    registry = CollectorRegistry()
    snapshot: Snapshot[str] = Snapshot()
    reloader = Reloader(service="demo", paths=[path], load=load, snapshot=snapshot,
                        registry=registry, interval=0.05)
    return Service(
        name="demo", grpc_services=["demo.Service"], register=lambda server: None,
        registry=registry, reloader=reloader, describe=lambda: {"value": snapshot.get()},
    )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _health(port: int, name: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        return int(resp.status)


async def test_not_ready_until_first_good_load(tmp_path: Path) -> None:
    """/healthz and gRPC health stay NOT_SERVING while the config is bad, then turn ready."""
    path = tmp_path / "c.yaml"
    path.write_text("bad\n")
    settings = ServerSettings(service="demo", listen="127.0.0.1:0", admin="127.0.0.1:0")
    running = await start(_service(path), settings)
    admin = f"http://127.0.0.1:{running.admin_port}"
    try:
        status, _ = await _to_thread(_get, f"{admin}/healthz")
        assert status == 503
        assert await _health(running.grpc_port, "demo.Service") == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        _, body = await _to_thread(_get, f"{admin}/config")
        assert json.loads(body)["last_error"]["file"] == "c.yaml"

        path.write_text("good\n")
        for _ in range(60):
            await _sleep(0.05)
            if (await _to_thread(_get, f"{admin}/healthz"))[0] == 200:
                break
        assert (await _to_thread(_get, f"{admin}/healthz"))[0] == 200
        await _sleep(0.6)  # health refresh period
        assert await _health(running.grpc_port, "demo.Service") == (
            health_pb2.HealthCheckResponse.SERVING
        )
        status, body = await _to_thread(_get, f"{admin}/config")
        assert json.loads(body) == {"config": {"value": "good"}, "last_error": None}
        status, metrics = await _to_thread(_get, f"{admin}/metrics")
        assert 'mixer_config_loads_total{result="error",service="demo"} 1.0' in metrics
        assert 'mixer_config_loads_total{result="success",service="demo"} 1.0' in metrics
    finally:
        await running.stop(0.1)
    assert running.stopping


_RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from prometheus_client import CollectorRegistry
    from envoy_mixer.common.logs import configure_logging
    from envoy_mixer.runtime.reload import Reloader
    from envoy_mixer.runtime.service import Service, run
    from envoy_mixer.runtime.settings import ServerSettings
    from envoy_mixer.common.snapshot import Snapshot

    path = Path(sys.argv[1])
    configure_logging("info")

    def build() -> Service:
        reg = CollectorRegistry()
        snap = Snapshot()
        rel = Reloader(service="demo", paths=[path], load=path.read_text, snapshot=snap,
                       registry=reg)
        return Service(name="demo", grpc_services=["demo.Service"], register=lambda s: None,
                       registry=reg, reloader=rel)

    sys.exit(run(build, ServerSettings("demo", sys.argv[2], sys.argv[3], grace_seconds=0.5)))
    """
)


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM flips health to NOT_SERVING, stops the server and exits with code 0."""
    path = tmp_path / "c.yaml"
    path.write_text("x\n")
    grpc_port, admin_port = procs.free_port(), procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(path), f"127.0.0.1:{grpc_port}",
         f"127.0.0.1:{admin_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not procs.http_ok(f"http://127.0.0.1:{admin_port}/healthz"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        _, err = proc.communicate()
        events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
        assert "shutdown_started" in events and "shutdown_complete" in events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bind_conflict_is_a_clear_error(tmp_path: Path) -> None:
    """A taken port gives exit code 1 and a bind_failed log line, not a traceback."""
    import socket

    path = tmp_path / "c.yaml"
    path.write_text("x\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(path), f"127.0.0.1:{procs.free_port()}",
             f"127.0.0.1:{taken}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert out.returncode == 1
    assert '"event":"bind_failed"' in out.stderr


async def _to_thread(fn: Callable[..., tuple[int, str]], *args: object) -> tuple[int, str]:
    import asyncio

    return await asyncio.to_thread(fn, *args)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
