"""Backends: the same behaviour from memory and Redis; Redis round trips, keys and failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis

from envoy_mixer.dev import procs
from ratelimit.backends import Backend, CounterOp
from ratelimit.backends.redis import RedisBackend
from ratelimit.config import load_texts
from ratelimit.errors import BackendError
from ratelimit.limiter import Code, Descriptor, Limiter, LimiterSettings, Request


async def test_fixed_ops_increment_and_read(backend: Backend) -> None:
    """INCRBY semantics: results are counts after the addend; addend 0 only reads."""
    ops = [CounterOp("a_1", 1, 60), CounterOp("b_1", 5, 60)]
    assert await backend.apply(ops) == [1, 5]
    assert await backend.apply(ops) == [2, 10]
    assert await backend.apply([CounterOp("a_1", 0, 60), CounterOp("new_1", 0, 60)]) == [2, 0]


async def test_sliding_ops_only_count_admitted_hits(backend: Backend) -> None:
    """A sliding op adds the weighted previous window and counts only admitted hits."""
    prev = CounterOp("{s}sw_0", 4, 120, prev_key="{s}sw_-60", prev_weight=0.0, limit=10)
    assert await backend.apply([prev]) == [4]
    cur = CounterOp("{s}sw_60", 3, 120, prev_key="{s}sw_0", prev_weight=0.5, limit=6)
    assert await backend.apply([cur]) == [5]  # floor(4 * 0.5) + 0 + 3, admitted
    assert await backend.apply([cur]) == [8]  # 2 + 3 + 3 > 6: rejected, not counted
    check = CounterOp("{s}sw_60", 0, 120, prev_key="{s}sw_0", prev_weight=0.5, limit=6)
    assert await backend.apply([check]) == [5]


async def test_limiter_over_both_backends(backend: Backend, clock: Any) -> None:
    """The same limiter sequence gives the same answers on every backend."""
    config = load_texts([("t.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: "
                                    "{unit: minute, requests_per_unit: 3}\n")])
    limiter = Limiter(backend, LimiterSettings(local_cache=False), clock=clock)
    req = Request("d", (Descriptor((("k", "v"),)), Descriptor((("k", "w"),))))
    answers = [(await limiter.decide(config, req)).statuses[0].remaining for _ in range(4)]
    assert answers == [2, 1, 0, 0]


async def test_memory_keys_expire(clock: Any) -> None:
    """Memory counters disappear after their TTL."""
    from ratelimit.backends import MemoryBackend

    backend = MemoryBackend(clock)
    await backend.apply([CounterOp("k", 2, 10)])
    clock.advance(10)
    assert await backend.apply([CounterOp("k", 0, 10)]) == [0]


async def test_redis_keys_namespaced_and_expiring(redis_url: str) -> None:
    """Redis keys carry the prefix and a TTL no longer than the window."""
    backend = RedisBackend(redis_url, prefix="mixer:rl:")
    try:
        await backend.apply([CounterOp("d_k_v_60", 1, 60),
                             CounterOp("{d_k_v_}sw_60", 1, 120, "{d_k_v_}sw_0", 0.5, 5)])
    finally:
        await backend.close()
    client = redis.Redis.from_url(redis_url)
    assert sorted(client.keys("*")) == [b"mixer:rl:d_k_v_60", b"mixer:rl:{d_k_v_}sw_60"]
    assert 0 < client.ttl("mixer:rl:d_k_v_60") <= 60
    assert 60 < client.ttl("mixer:rl:{d_k_v_}sw_60") <= 120
    client.close()


async def test_redis_one_round_trip_per_request(redis_url: str) -> None:
    """Five descriptors cost exactly one EVALSHA (after the script is loaded)."""
    config = load_texts([("t.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: "
                                    "{unit: minute, requests_per_unit: 3}\n")])
    backend = RedisBackend(redis_url)
    limiter = Limiter(backend)
    req = Request("d", tuple(Descriptor((("k", str(i)),)) for i in range(5)))
    client = redis.Redis.from_url(redis_url)
    try:
        await limiter.decide(config, req)
        client.config_resetstat()
        await limiter.decide(config, req)
        stats = client.info("commandstats")
    finally:
        await backend.close()
        client.close()
    calls = {name: v["calls"] for name, v in stats.items() if name.startswith("cmdstat_")}
    assert calls.get("cmdstat_evalsha") == 1
    assert calls.get("cmdstat_incrby") == 5
    assert "cmdstat_eval" not in calls


async def test_two_replicas_on_one_redis_admit_exactly_the_limit(redis_url: str) -> None:
    """Two independent limiters on one Redis, 200 concurrent requests, limit 50 -> 50 admitted."""
    config = load_texts([("t.yaml", "domain: d\ndescriptors:\n  - key: k\n    rate_limit: "
                                    "{unit: day, requests_per_unit: 50}\n")])
    backends = [RedisBackend(redis_url, timeout=2.0), RedisBackend(redis_url, timeout=2.0)]
    limiters = [Limiter(b) for b in backends]
    req = Request("d", (Descriptor((("k", "shared"),)),))
    try:
        decisions = await asyncio.gather(
            *(limiters[i % 2].decide(config, req) for i in range(200))
        )
    finally:
        for b in backends:
            await b.close()
    assert sum(d.overall is Code.OK for d in decisions) == 50


async def test_redis_down_fails_fast_and_recovers(own_redis: Any) -> None:
    """Redis stopped: BackendError within the timeout; restarted on the same port: works again."""
    proc = own_redis()
    backend = RedisBackend(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.2)
    op = [CounterOp("k_1", 1, 60)]
    try:
        assert await backend.apply(op) == [1]
        proc.stop()
        for _ in range(3):
            # A generous bound, far above the 0.2 s timeout: reaching it means the call hung.
            with pytest.raises(BackendError):
                async with asyncio.timeout(10):
                    await backend.apply(op)
        assert not backend.healthy()
        own_redis()
        assert await backend.ping()
        assert await backend.apply(op) == [1]  # a fresh Redis: the counter starts over
        assert backend.healthy()
    finally:
        await backend.close()


async def test_redis_unresponsive_times_out(own_redis: Any) -> None:
    """A Redis that accepts but never answers (SIGSTOP) hits the timeout, not a hang."""
    import signal

    proc = own_redis()
    backend = RedisBackend(f"redis://127.0.0.1:{own_redis.port}/0", timeout=0.2)
    try:
        await backend.apply([CounterOp("k_1", 1, 60)])
        proc.signal(signal.SIGSTOP)
        # The backend's own timeout fires (kind "timeout"), long before this generous bound.
        with pytest.raises(BackendError) as info:
            async with asyncio.timeout(10):
                await backend.apply([CounterOp("k_1", 1, 60)])
        assert info.value.kind == "timeout"
        proc.signal(signal.SIGCONT)
        # The timed-out call had already been written, so Redis applies it once it resumes:
        # a timeout answers UNAVAILABLE but may still have counted the hit.
        assert await backend.apply([CounterOp("k_1", 1, 60)]) == [3]
    finally:
        proc.signal(signal.SIGCONT)
        await backend.close()


async def test_redis_batches_concurrent_calls(redis_url: str) -> None:
    """Concurrent calls share script calls, and every caller still gets its own exact counts."""
    backend = RedisBackend(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        await backend.apply([CounterOp("warm_1", 1, 60)])  # loads the script
        client.config_resetstat()
        results = await asyncio.gather(
            *(backend.apply([CounterOp("same_1", 1, 60), CounterOp(f"own_{i}", 2, 60)])
              for i in range(20))
        )
        stats = client.info("commandstats")
    finally:
        await backend.close()
        client.close()
    assert sorted(r[0] for r in results) == list(range(1, 21))
    assert all(r[1] == 2 for r in results)
    assert stats["cmdstat_evalsha"]["calls"] < 20


def _redis_cli(port: int, *args: str) -> str:
    import subprocess

    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout


@pytest.mark.slow
async def test_redis_auth_through_url(tmp_path: Path) -> None:
    """A password in the URL authenticates; a wrong one fails as a BackendError."""
    port = procs.free_port()
    proc = procs.redis_process(port, tmp_path, extra=["--requirepass", "s3cret"]).start()
    try:
        proc.wait_ready(15)
        good = RedisBackend(f"redis://:s3cret@127.0.0.1:{port}/0")
        bad = RedisBackend(f"redis://:wrong@127.0.0.1:{port}/0")
        try:
            assert await good.apply([CounterOp("k_1", 1, 60)]) == [1]
            assert good.url == f"redis://:***@127.0.0.1:{port}/0"
            with pytest.raises(BackendError):
                await bad.apply([CounterOp("k_1", 1, 60)])
        finally:
            await good.close()
            await bad.close()
    finally:
        proc.stop()


@pytest.mark.slow
async def test_redis_cluster_mode(tmp_path: Path) -> None:
    """Cluster mode (one-node cluster owning every slot): ops on many slots, sliding keys too."""
    port = procs.free_port()
    proc = procs.redis_process(port, tmp_path, extra=[
        "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"),
        # The bus port defaults to port + 10000, which may not exist for a high free port.
        "--cluster-port", str(procs.free_port()),
    ]).start()
    try:
        proc.wait_ready(15)
        _redis_cli(port, "cluster", "addslotsrange", "0", "16383")
        for _ in range(100):
            if "cluster_state:ok" in _redis_cli(port, "cluster", "info"):
                break
            await asyncio.sleep(0.05)
        backend = RedisBackend(f"redis://127.0.0.1:{port}", mode="cluster")
        assert await backend.ping(5.0)  # reads the slot map, as the service does at startup
        ops = [CounterOp(f"d_k_{i}_60", 1, 60) for i in range(10)]
        ops.append(CounterOp("{d_s_}sw_60", 1, 120, "{d_s_}sw_0", 0.5, 5))
        try:
            assert await backend.apply(ops) == [1] * 11
            assert await backend.apply(ops) == [2] * 11
        finally:
            await backend.close()
    finally:
        proc.stop()


@pytest.mark.slow
async def test_redis_sentinel_mode(tmp_path: Path) -> None:
    """Sentinel mode finds the master through a Sentinel named in the URL."""
    master_port, sentinel_port = procs.free_port(), procs.free_port()
    master = procs.redis_process(master_port, tmp_path).start()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n")
    sentinel = procs.ManagedProcess(
        name="sentinel", argv=["redis-server", str(conf), "--sentinel"],
        log_path=tmp_path / "sentinel.log", ready=lambda: procs.tcp_ok(sentinel_port),
    ).start()
    try:
        master.wait_ready(15)
        sentinel.wait_ready(15)
        backend = RedisBackend(f"redis://127.0.0.1:{sentinel_port}/mymaster", mode="sentinel")
        try:
            assert await backend.apply([CounterOp("k_1", 3, 60)]) == [3]
        finally:
            await backend.close()
        assert _redis_cli(master_port, "get", "mixer:rl:k_1").strip() == "3"
    finally:
        sentinel.stop()
        master.stop()

