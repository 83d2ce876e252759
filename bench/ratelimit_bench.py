"""Rate limit benchmark: ShouldRateLimit through gRPC, ours (memory, Redis) vs a trivial servicer.

Every server runs as its own process and is driven by the shared harness (pre-serialized
requests from a separate client process); the figure compared is the server's CPU per call.
Requests look like what envoy-configs/ratelimit.yaml sends: three descriptors (generic_key,
remote_address over 1,000 addresses, user over 100 users), with limits high enough that the
calls are decided and counted but not rejected. A pure in-process figure (limiter decisions
per second, memory backend, no gRPC) is printed beside it.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from bench.harness import (
    COMPARISON_HEADERS,
    compare_unary,
    comparison_rows,
    mixer_target,
    print_table,
    trivial_target,
)
from envoy_mixer import procs

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
    """Serialized RateLimitRequests with three descriptors each."""
    out = []
    for i in range(count):
        entries = [("generic_key", "edge"), ("remote_address", f"10.0.{i // 256}.{i % 256}"),
                   ("user", f"user-{i % 100}")]
        request = rls_pb2.RateLimitRequest(domain="edge", descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v)]
            )
            for k, v in entries
        ])
        out.append(request.SerializeToString())
    return out


def pure_decisions_per_second(config_dir: Path, seconds: float = 1.0) -> float:
    """Limiter decisions per second in-process (memory backend, no gRPC, no protobuf)."""
    from ratelimit.backends import MemoryBackend
    from ratelimit.config import load_config
    from ratelimit.limiter import Descriptor, Limiter, Request

    config = load_config(config_dir)
    limiter = Limiter(MemoryBackend())
    requests = [
        Request("edge", (
            Descriptor((("generic_key", "edge"),)),
            Descriptor((("remote_address", f"10.0.0.{i}"),)),
            Descriptor((("user", f"user-{i % 100}"),)),
        ))
        for i in range(256)
    ]

    async def run() -> float:
        done = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for req in requests:
                await limiter.decide(config, req)
            done += len(requests)
        return done / seconds

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
    rate = pure_decisions_per_second(workdir / "limits")
    print_table("Limiter alone (in-process, memory backend, 3 descriptors/decision)",
                ("what", "decisions/s", "µs/decision"), [["limiter.decide", rate, 1e6 / rate]])


if __name__ == "__main__":
    main()
