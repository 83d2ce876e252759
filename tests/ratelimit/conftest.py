"""Fixtures for the rate limit tests: a fake clock, config loading, backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from envoy_mixer.dev import procs
from ratelimit.backends import Backend, MemoryBackend
from ratelimit.config import RateLimitConfig, load_config, load_texts
from ratelimit.limiter import Descriptor, Request

CONFIGS = Path(__file__).parent / "configs"


class FakeClock:
    """A settable Unix-seconds clock (callable, like ``time.time``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at Unix time 1,000,000 (an hour boundary is at 997,200 + 3,600)."""
    return FakeClock()


@pytest.fixture
def configs() -> Path:
    """The directory of test YAML files."""
    return CONFIGS


@pytest.fixture
def load() -> Callable[[str], RateLimitConfig]:
    """Load one config file from tests/ratelimit/configs by name."""
    return lambda name: load_config(CONFIGS / name)


@pytest.fixture
def from_text() -> Callable[[str], RateLimitConfig]:
    """Build a config from YAML text (file name ``test.yaml``)."""
    return lambda text: load_texts([("test.yaml", text)])


def request(domain: str, *descriptors: tuple[tuple[str, str], ...] | Descriptor,
            hits_addend: int = 0) -> Request:
    """A Request from entry tuples (or ready Descriptors)."""
    return Request(
        domain=domain,
        descriptors=tuple(d if isinstance(d, Descriptor) else Descriptor(d) for d in descriptors),
        hits_addend=hits_addend,
    )


@pytest.fixture
def make_request() -> Callable[..., Request]:
    """``make_request(domain, (("k", "v"),), ...)`` -> Request."""
    return request


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Backend]:
    """Each backend in turn: memory (on the fake clock) and a real Redis."""
    if request.param == "memory":
        yield MemoryBackend(clock)
        return
    from ratelimit.backends.redis import RedisBackend

    url = request.getfixturevalue("redis_url")
    redis_backend = RedisBackend(url, timeout=1.0, prefix="test:rl:")
    yield redis_backend
    await redis_backend.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server this test may stop and restart (not the shared module one)."""
    port = procs.free_port()
    started: list[procs.ManagedProcess] = []

    def start() -> procs.ManagedProcess:
        proc = procs.redis_process(port, tmp_path).start()
        started.append(proc)
        proc.wait_ready(15)
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in started:
        proc.stop()
