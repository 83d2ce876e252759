"""Fixtures that start real processes on free ports and always stop them.

- ``redis_url``: a fresh ``redis-server`` per test module (persistence off).
- ``start_envoy(config_text)``: Envoy with a config rendered for the test.
- ``start_mixer(args, admin_port)``: one of our services as a subprocess (``mixer ...``).
- ``free_port``: a free TCP port on 127.0.0.1.
Every process started through these is stopped at teardown, even when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from envoy_mixer.dev import procs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function giving a fresh free port each call."""
    return procs.free_port


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.ManagedProcess]:
    """A real redis-server on a free port for the module; stopped afterwards."""
    workdir = tmp_path_factory.mktemp("redis")
    port = procs.free_port()
    proc = procs.redis_process(port, workdir).start()
    try:
        proc.wait_ready(15)
        proc.port = port  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_server: procs.ManagedProcess) -> Iterator[str]:
    """URL of the module's Redis, flushed before each test."""
    import redis

    port = redis_server.port  # type: ignore[attr-defined]
    client = redis.Redis(host="127.0.0.1", port=port)
    client.flushall()
    client.close()
    yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def start_envoy(tmp_path: Path) -> Iterator[Callable[..., procs.ManagedProcess]]:
    """Start Envoy from config text; ``admin_port`` must match the text's admin port."""
    started: list[procs.ManagedProcess] = []

    def start(config_text: str, admin_port: int, name: str = "envoy",
              concurrency: int = 1) -> procs.ManagedProcess:
        path = tmp_path / f"{name}.yaml"
        path.write_text(config_text)
        proc = procs.envoy_process(
            path, admin_port, tmp_path / f"{name}.log", concurrency=concurrency
        )
        started.append(proc.start())
        proc.wait_ready(30)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def start_mixer(tmp_path: Path) -> Iterator[Callable[..., procs.ManagedProcess]]:
    """Start ``mixer ARGS`` as a subprocess and wait for its /healthz."""
    started: list[procs.ManagedProcess] = []

    def start(args: Sequence[str], admin_port: int, wait: bool = True,
              env: dict[str, str] | None = None) -> procs.ManagedProcess:
        log = tmp_path / f"mixer-{args[0]}-{admin_port}.log"
        proc = procs.mixer_process(args, admin_port, log, env=env)
        started.append(proc.start())
        if wait:
            proc.wait_ready(30)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
