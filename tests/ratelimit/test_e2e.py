"""End to end through real Envoy (envoy-configs/ratelimit.yaml) and real service processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from envoy_mixer.dev import procs

REPO = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = REPO / "envoy-configs" / "ratelimit.yaml"
LIMITS = Path(__file__).parent / "configs" / "e2e"

pytestmark = pytest.mark.slow


def render(admin: int, public: int, upstream: int, rls_ports: list[int]) -> str:
    """The shipped Envoy config with its ports rewritten for this test."""
    config = yaml.safe_load(ENVOY_CONFIG.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    listeners["public"]["address"]["socket_address"]["port_value"] = public
    listeners["upstream"]["address"]["socket_address"]["port_value"] = upstream
    clusters = {item["name"]: item for item in config["static_resources"]["clusters"]}
    clusters["upstream"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"]["socket_address"]["port_value"] = upstream
    clusters["ratelimit"]["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in rls_ports
    ]
    return yaml.safe_dump(config)


def away_from_hour_boundary() -> None:
    """The e2e limits are per hour: don't start a run in the last seconds of an hour."""
    left = 3600 - time.time() % 3600
    if left < 5:
        time.sleep(left + 0.1)


def start_services(start_mixer: Callable[..., Any], count: int, *extra: str) -> list[int]:
    ports = []
    for _ in range(count):
        grpc_port, admin_port = procs.free_port(), procs.free_port()
        start_mixer(["ratelimit", "--config", str(LIMITS), "--listen", f"127.0.0.1:{grpc_port}",
                     "--admin", f"127.0.0.1:{admin_port}", *extra], admin_port)
        ports.append((grpc_port, admin_port))
    return [p for pair in ports for p in pair]


async def fire(url: str, n: int, concurrency: int, headers: dict[str, str]) -> list[Any]:
    """``n`` GETs with at most ``concurrency`` in flight; returns (status, headers) pairs."""
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, dict[str, str]]:
            async with sem, session.get(url, headers=headers) as resp:
                await resp.read()
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}

        return await asyncio.gather(*(one() for _ in range(n)))


async def http_get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


def test_shipped_envoy_config_validates() -> None:
    """envoy-configs/ratelimit.yaml passes ``envoy --mode validate``."""
    result = procs.validate_envoy_config(ENVOY_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_envoy_memory_backend_exact_limit_then_429(
    start_mixer: Callable[..., Any], start_envoy: Callable[..., Any]
) -> None:
    """Through Envoy: exactly 5 requests pass per IP, then 429 with x-ratelimit-* headers."""
    grpc_port, _ = start_services(start_mixer, 1)
    admin, public, upstream = procs.free_port(), procs.free_port(), procs.free_port()
    start_envoy(render(admin, public, upstream, [grpc_port]), admin)
    away_from_hour_boundary()
    results = []
    for _ in range(8):
        results += await fire(f"http://127.0.0.1:{public}/", 1, 1, {})
    assert [status for status, _ in results] == [200] * 5 + [429] * 3
    ok_headers, limited_headers = results[0][1], results[5][1]
    assert ok_headers["x-ratelimit-remaining"] == "4"
    # Envoy lists every limit and leads with the one closest to running out.
    assert ok_headers["x-ratelimit-limit"] == '5, 1000;w=1, 5;w=3600;name="per_ip"'
    assert limited_headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(limited_headers["x-ratelimit-reset"]) <= 3600
    assert limited_headers["x-envoy-ratelimited"] == "true"
    stats = await http_get(f"http://127.0.0.1:{admin}/stats?filter=ratelimit")
    assert "cluster.upstream.ratelimit.over_limit: 3" in stats


async def test_envoy_two_replicas_on_redis_share_one_limit(
    start_mixer: Callable[..., Any], start_envoy: Callable[..., Any], redis_url: str
) -> None:
    """Two Redis-backed replicas behind Envoy, 40 concurrent requests: exactly 3 pass per user."""
    ports = start_services(start_mixer, 2, "--backend", "redis", "--redis-url", redis_url)
    grpc_ports, admin_ports = ports[0::2], ports[1::2]
    admin, public, upstream = procs.free_port(), procs.free_port(), procs.free_port()
    start_envoy(render(admin, public, upstream, grpc_ports), admin)
    away_from_hour_boundary()
    results = await fire(f"http://127.0.0.1:{public}/", 40, 10, {"x-user-id": "carol"})
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 3 and statuses.count(429) == 37
    limited = next(h for s, h in results if s == 429)
    assert limited["x-ratelimit-remaining"] == "0"
    # Both replicas served part of the load (so the limit really was shared through Redis).
    for port in admin_ports:
        text = await http_get(f"http://127.0.0.1:{port}/metrics")
        line = next(line for line in text.splitlines() if line.startswith(
            'ratelimit_service_rate_limit_total_hits_total{domain="edge",key="user"}'))
        assert 0 < float(line.split()[-1]) < 40


async def test_two_replica_processes_on_redis_admit_exactly_the_limit(
    start_mixer: Callable[..., Any], redis_url: str
) -> None:
    """Two service processes on one Redis, 300 concurrent gRPC calls at limit 100: 100 pass."""
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    ports = start_services(start_mixer, 2, "--backend", "redis", "--redis-url", redis_url)
    away_from_hour_boundary()
    entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="bulk", value="job")
    request = rls_pb2.RateLimitRequest(
        domain="edge", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])]
    )
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports[0::2]]
    stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]
    try:
        answers = await asyncio.gather(
            *(stubs[i % 2].ShouldRateLimit(request, timeout=10) for i in range(300))
        )
    finally:
        for channel in channels:
            await channel.close()
    ok = rls_pb2.RateLimitResponse.Code.OK
    assert sum(a.overall_code == ok for a in answers) == 100


def test_python_dash_m_and_mixer_cli_help() -> None:
    """``python -m ratelimit`` and ``mixer ratelimit`` offer the same flags."""
    import subprocess
    import sys

    outputs = [
        subprocess.run([sys.executable, "-m", module, *args, "--help"], capture_output=True,
                       text=True, check=True).stdout
        for module, args in (("ratelimit", []), ("envoy_mixer.cli", ["ratelimit"]))
    ]
    for text in outputs:
        for flag in ("--config", "--listen", "--admin", "--backend", "--redis-url",
                     "--redis-timeout", "--redis-mode", "--shadow-mode", "--response-headers"):
            assert flag in text


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://x", "redis URL ftp://x: unsupported scheme 'ftp'"),
    ("rediss://127.0.0.1:1/0?ssl_cert_reqs=maybe",
     "redis URL rediss://127.0.0.1:1/0?ssl_cert_reqs=maybe: invalid ssl_cert_reqs 'maybe'"),
    ("redis://:secret@127.0.0.1:port/0", "redis URL redis://:***@127.0.0.1:port/0: port must "
     "be a number, got 'port'"),
])
def test_bad_redis_url_is_one_line_and_exit_2(url: str, message: str, tmp_path: Path) -> None:
    """A --redis-url the backend rejects ends with one clear line and exit code 2."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "envoy_mixer.cli", "ratelimit",
         "--config", str(REPO / "examples" / "ratelimit.yaml"), "--backend", "redis",
         "--redis-url", url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2
    assert f"mixer ratelimit: {message}" in out.stderr
    assert "Traceback" not in out.stderr
