"""The reference's Redis settings against real redis-servers: key layout, jitter, per-second Redis.

A service migrating from envoyproxy/ratelimit must find (and keep writing) the very same keys:
``<CACHE_KEY_PREFIX><domain>_<key>_<value>_..._<window start>``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis

from envoy_mixer.dev import procs
from ratelimit.backends import create_backend
from ratelimit.backends.persecond import PerSecondSplit
from ratelimit.backends.redis import RedisBackend
from ratelimit.config import load_texts
from ratelimit.limiter import Descriptor, Limiter, LimiterSettings, Request

LIMITS = """\
domain: domain
descriptors:
  - key: key
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: slow
    rate_limit: {unit: minute, requests_per_unit: 10}
"""


def client(url: str) -> redis.Redis:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return redis.Redis(host="127.0.0.1", port=port, decode_responses=True)


class TopRandom(random.Random):
    """A Random whose randrange always gives the largest value (the jitter's upper bound)."""

    def randrange(self, start: int, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return start - 1


@pytest.mark.slow
async def test_keys_are_the_references_with_its_prefix(redis_url: str, clock: Any) -> None:
    """An empty CACHE_KEY_PREFIX gives exactly the reference's keys and TTLs."""
    backend = RedisBackend(redis_url, timeout=1.0, prefix="")
    try:
        lim = Limiter(backend, LimiterSettings(), clock=clock)
        config = load_texts([("d.yaml", LIMITS)])
        await lim.decide(config, Request("domain", (Descriptor((("key", "value"),)),
                                                    Descriptor((("slow", "x"),)))))
    finally:
        await backend.close()
    r = client(redis_url)
    assert sorted(r.keys("*")) == ["domain_key_value_1000000", "domain_slow_x_999960"]
    assert r.get("domain_key_value_1000000") == "1"
    assert r.ttl("domain_slow_x_999960") in (59, 60)
    r.close()


@pytest.mark.slow
async def test_expiration_jitter_extends_ttl(redis_url: str, clock: Any) -> None:
    """EXPIRATION_JITTER_MAX_SECONDS adds up to jitter-1 seconds to each key's expiry."""
    backend = RedisBackend(redis_url, timeout=1.0, prefix="", expiration_jitter=300,
                           rng=TopRandom())
    try:
        lim = Limiter(backend, LimiterSettings(), clock=clock)
        await lim.decide(load_texts([("d.yaml", LIMITS)]),
                         Request("domain", (Descriptor((("slow", "x"),)),)))
    finally:
        await backend.close()
    r = client(redis_url)
    assert 300 < r.ttl("domain_slow_x_999960") <= 60 + 299
    r.close()


@pytest.mark.slow
async def test_per_second_limits_go_to_the_per_second_redis(
    redis_url: str, tmp_path: Path, clock: Any
) -> None:
    """REDIS_PERSECOND_URL: second-unit counters live on the second Redis, the rest on the main."""
    port = procs.free_port()
    second = procs.redis_process(port, tmp_path).start()
    try:
        second.wait_ready(15)
        backend = create_backend(
            "redis", redis_url=redis_url, redis_timeout=1.0, redis_prefix="",
            per_second_url=f"redis://127.0.0.1:{port}/0",
        )
        assert isinstance(backend, PerSecondSplit)
        try:
            lim = Limiter(backend, LimiterSettings(), clock=clock)
            config = load_texts([("d.yaml", LIMITS)])
            req = Request("domain", (Descriptor((("slow", "x"),)), Descriptor((("key", "v"),))))
            first = await lim.decide(config, req)
            again = await lim.decide(config, req)
        finally:
            await backend.close()
        assert [s.remaining for s in first.statuses] == [9, 9]
        assert [s.remaining for s in again.statuses] == [8, 8]
        main, fast = client(redis_url), client(f"redis://127.0.0.1:{port}/0")
        assert main.keys("*") == ["domain_slow_x_999960"]
        assert fast.keys("*") == ["domain_key_v_1000000"]
        main.close()
        fast.close()
    finally:
        second.stop()
