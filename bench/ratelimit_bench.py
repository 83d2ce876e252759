"""Rate limit benchmark: ShouldRateLimit through gRPC, ours (memory, Redis) vs a trivial servicer.

Every server runs as its own process and is driven by the shared harness (pre-serialized
requests from a separate client process); the figure compared is the server's CPU per call.
Requests look like what envoy-configs/ratelimit.yaml sends: three descriptors (generic_key,
remote_address over 1,000 addresses, user over 100 users), with limits high enough that the
calls are decided and counted but not rejected. In-process figures (no gRPC; warm and cold
descriptor caches) are printed beside it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from bench.harness import (
    COMPARISON_HEADERS,
    compare_unary,
    comparison_rows,
    mixer_target,
    print_table,
    runtime_trivial_target,
    trivial_target,
)
from envoy_mixer.dev import procs

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

LIMITS = """\
domain: edge
descriptors:
  - key: generic_key
    value: edge
    rate_limit: {unit: second, requests_per_unit: 100000000}
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 100000000}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 100000000}
"""


def payloads(count: int = 1000) -> list[bytes]:
    """Serialized RateLimitRequests with three descriptors each (``count`` distinct ones)."""
    out = []
    for i in range(count):
        entries = [("generic_key", "edge"),
                   ("remote_address", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"),
                   ("user", f"user-{i % 100}")]
        request = rls_pb2.RateLimitRequest(domain="edge", descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)]
            )
            for k, v in entries
        ])
        out.append(request.SerializeToString())
    return out


def in_process_costs(config_dir: Path, seconds: float = 1.0) -> list[list[object]]:
    """µs per call without gRPC: the limiter alone, and bytes -> bytes through the servicer.

    "warm" cycles 1,000 distinct requests (descriptor plans cached, as with returning clients);
    "cold" cycles 60,000 distinct ones, more than the plan cache holds, so every call matches
    from scratch.
    """
    from prometheus_client import CollectorRegistry

    from envoy_mixer.common.snapshot import Snapshot
    from ratelimit.backends import MemoryBackend
    from ratelimit.config import load_config
    from ratelimit.limiter import Limiter
    from ratelimit.metrics import RateLimitMetrics
    from ratelimit.server import RateLimitServicer
    from ratelimit.wire import decode_request

    config = load_config(config_dir)
    warm, cold = payloads(1000), payloads(60_000)

    async def rate(call: Callable[[int], Awaitable[object]]) -> float:
        done = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for i in range(done, done + 500):
                await call(i)
            done += 500
        return seconds / done * 1e6

    async def run() -> list[list[object]]:
        limiter = Limiter(MemoryBackend())
        servicer = RateLimitServicer(
            Limiter(MemoryBackend()), Snapshot(config), RateLimitMetrics(CollectorRegistry())
        )
        decoded = [decode_request(p) for p in warm]
        return [
            ["limiter.decide (warm)",
             await rate(lambda i: limiter.decide(config, decoded[i % 1000]))],
            ["servicer bytes->bytes (warm)",
             await rate(lambda i: servicer.should_rate_limit_raw(warm[i % 1000], None))],
            ["servicer bytes->bytes (cold)",
             await rate(lambda i: servicer.should_rate_limit_raw(cold[i % 60_000], None))],
        ]

    return asyncio.run(run())


def main() -> None:
    """Print the comparison table."""
    workdir = Path(tempfile.mkdtemp(prefix="mixer-rl-bench-"))
    (workdir / "limits").mkdir()
    (workdir / "limits" / "edge.yaml").write_text(LIMITS)
    redis_port = procs.free_port()
    redis = procs.redis_process(redis_port, workdir).start()
    try:
        redis.wait_ready(15)
        config = ["ratelimit", "--config", str(workdir / "limits")]
        trivial = trivial_target("ratelimit")
        targets = [
            trivial,
            # The same trivial servicer on our shared runtime: what health, reflection, the
            # admin listener and the reload task cost per call, apart from rate limiting.
            runtime_trivial_target("ratelimit"),
            mixer_target("mixer ratelimit (memory)", config),
            mixer_target("mixer ratelimit (redis)", [
                *config, "--backend", "redis", "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
            ]),
        ]
        results = compare_unary(targets, METHOD, payloads(), seconds=3.0, rounds=3)
    finally:
        redis.stop()
    print_table(
        "ShouldRateLimit via gRPC, 3 descriptors/call (median of 3 rounds; ratio = server CPU "
        "per call / trivial servicer's; target <= 1.20x)",
        COMPARISON_HEADERS, comparison_rows(results, trivial.name),
    )
    print_table("In-process, no gRPC (memory backend, 3 descriptors/call)",
                ("what", "µs/call"), in_process_costs(workdir / "limits"))


if __name__ == "__main__":
    main()
