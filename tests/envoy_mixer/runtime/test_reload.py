"""Validated hot reload: good changes apply, bad ones keep the old snapshot and are counted."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.snapshot import NotLoadedError, Snapshot
from envoy_mixer.common.yamlsrc import load_file
from envoy_mixer.runtime.reload import (
    REASON_APPLY,
    REASON_INTERNAL,
    REASON_INVALID,
    REASON_IO,
    Reloader,
    fingerprint,
)


def _loader(path: Path) -> dict[str, int]:
    doc = load_file(path)[0]
    if not isinstance(doc.data.get("limit"), int):
        raise doc.error("limit must be an integer", ("limit",))
    return {"limit": doc.data["limit"]}


def _count(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value(
        "mixer_config_loads_total", {"service": "test", "result": result}
    )
    return value or 0.0


def _reloader(path: Path, registry: CollectorRegistry) -> Reloader[dict[str, int]]:
    return Reloader(service="test", paths=[path], load=lambda: _loader(path),
                    snapshot=Snapshot(), registry=registry, interval=0.02)


def test_snapshot_before_first_load_raises() -> None:
    """Nothing is served before the first good load."""
    with pytest.raises(NotLoadedError):
        Snapshot[int]().get()


def test_bad_reload_keeps_old_config_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad file keeps the previous snapshot, logs file/line/field and bumps the error count."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 5\n")
    registry = CollectorRegistry()
    reloader = _reloader(path, registry)
    assert reloader.reload()
    assert reloader.snapshot.get() == {"limit": 5}

    path.write_text("# comment\nlimit: lots\n")
    with caplog.at_level(logging.ERROR):
        assert not reloader.reload()
    assert reloader.snapshot.get() == {"limit": 5}
    assert _count(registry, "success") == 1
    assert _count(registry, "error") == 1
    record = next(r for r in caplog.records if r.getMessage() == "config_load_error")
    fields = record.mixer_fields  # type: ignore[attr-defined]
    assert fields["file"] == "c.yaml" and fields["line"] == 2 and fields["field"] == "limit"
    assert isinstance(reloader.last_error, ConfigError)
    assert registry.get_sample_value("mixer_config_last_load_success", {"service": "test"}) == 0


def test_log_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    """configure_logging emits one JSON object per event with its fields."""
    import sys

    from envoy_mixer.common.logs import configure_logging, log_event

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", stream=sys.stderr)
        log_event(logging.getLogger("t"), "thing_happened", answer=42)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    payload = json.loads(line)
    assert payload["event"] == "thing_happened" and payload["answer"] == 42
    assert payload["level"] == "info" and payload["logger"] == "t"


# --- reload that cannot die -------------------------------------------------------------------


class ManualPolls:
    """An injected sleep: the watcher runs exactly one poll per ``poll()`` from the test.

    Sleeps of ``interval`` (between polls) park until released; any other sleep (the settle
    wait) returns at once but is recorded, so no test ever waits on the wall clock.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sleeps: list[float] = []
        self._parked: asyncio.Queue[None] = asyncio.Queue()
        self._release: asyncio.Queue[None] = asyncio.Queue()
        self._is_parked = False
        self.watcher: asyncio.Task[None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds != self.interval:
            return
        self._parked.put_nowait(None)
        await self._release.get()

    async def _wait_parked(self) -> None:
        assert self.watcher is not None
        parked = asyncio.ensure_future(self._parked.get())
        await asyncio.wait({parked, self.watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not parked.done():
            parked.cancel()
            self.watcher.result()  # re-raise why the watcher died
            raise AssertionError("the watcher stopped")

    async def poll(self) -> None:
        """Let the watcher run one poll; return once it is back waiting for the next one."""
        if not self._is_parked:
            await self._wait_parked()
        self._release.put_nowait(None)
        await self._wait_parked()
        self._is_parked = True


def _watched(
    path: Path, registry: CollectorRegistry, load: Callable[[], dict[str, int]],
    polls: ManualPolls, **kwargs: Any,
) -> Reloader[dict[str, int]]:
    return Reloader(service="test", paths=[path], load=load, snapshot=Snapshot(),
                    registry=registry, interval=polls.interval, settle=0.25,
                    sleep=polls.sleep, **kwargs)


def _errors(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "mixer_config_load_errors_total", {"service": "test", "reason": reason}
    )
    return value or 0.0


class _FakeMemoryError(MemoryError):
    """A MemoryError the test can raise without exhausting memory."""


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RuntimeError("compiler bug"), REASON_INTERNAL),
        (_FakeMemoryError("out of memory"), REASON_INTERNAL),
        (KeyError("limit"), REASON_INTERNAL),
        (PermissionError(13, "Permission denied", "c.yaml"), REASON_IO),
    ],
    ids=["RuntimeError", "MemoryError", "KeyError", "PermissionError"],
)
async def test_watcher_survives_any_loader_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exc: Exception, reason: str
) -> None:
    """A loader raising anything keeps the old snapshot, is counted and logged, and the
    watcher goes on to apply the next good edit."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    registry = CollectorRegistry()
    polls = ManualPolls(interval=1.0)

    def load() -> dict[str, int]:
        if "boom" in path.read_text():
            raise exc
        return _loader(path)

    reloader = _watched(path, registry, load, polls)
    assert reloader.reload()
    polls.watcher = asyncio.create_task(reloader.watch())
    try:
        path.write_text("limit: 2\n# boom\n")
        with caplog.at_level(logging.ERROR):
            await polls.poll()
        assert reloader.snapshot.get() == {"limit": 1}
        assert _count(registry, "error") == 1 and _errors(registry, reason) == 1
        record = next(r for r in caplog.records if r.getMessage() == "config_load_error")
        fields = record.mixer_fields  # type: ignore[attr-defined]
        assert fields["error_type"] == type(exc).__name__
        assert fields["error"] == f"{type(exc).__name__}: {exc}"
        assert fields["reason"] == reason and fields["kept_previous"] is True
        assert reloader.last_error is not None
        assert reloader.last_error.message == f"{type(exc).__name__}: {exc}"

        path.write_text("limit: 3\n")
        await polls.poll()
        assert reloader.snapshot.get() == {"limit": 3}
        assert reloader.last_error is None and _count(registry, "success") == 2
        assert polls.sleeps[:3] == [1.0, 0.25, 1.0]  # poll, settle, poll: all injected
    finally:
        polls.watcher.cancel()


async def test_watch_applies_a_good_change(tmp_path: Path) -> None:
    """Editing the file is picked up by the watcher's next poll without a restart."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    polls = ManualPolls(interval=1.0)
    reloader = _watched(path, CollectorRegistry(), lambda: _loader(path), polls)
    reloader.reload()
    polls.watcher = asyncio.create_task(reloader.watch())
    try:
        path.write_text("limit: 22\n")
        await polls.poll()
        assert reloader.snapshot.get() == {"limit": 22}
    finally:
        polls.watcher.cancel()


async def test_unchanged_files_are_not_reloaded(tmp_path: Path) -> None:
    """A poll that sees no change neither loads nor waits the settle time."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    calls: list[None] = []
    polls = ManualPolls(interval=1.0)

    def load() -> dict[str, int]:
        calls.append(None)
        return _loader(path)

    reloader = _watched(path, CollectorRegistry(), load, polls)
    reloader.reload()
    polls.watcher = asyncio.create_task(reloader.watch())
    try:
        await polls.poll()
        await polls.poll()
        assert len(calls) == 1 and polls.sleeps == [1.0, 1.0, 1.0]
    finally:
        polls.watcher.cancel()


async def test_a_failing_on_swap_hook_is_counted_and_the_watcher_goes_on(
    tmp_path: Path,
) -> None:
    """An on_swap hook that raises is an apply_error; the next edit still gets applied."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    registry = CollectorRegistry()
    polls = ManualPolls(interval=1.0)
    applied: list[int] = []

    def hook(value: dict[str, int]) -> None:
        if value["limit"] == 2:
            raise ValueError("cannot open access log")
        applied.append(value["limit"])

    reloader = _watched(path, registry, lambda: _loader(path), polls, on_swap=hook)
    reloader.reload()
    polls.watcher = asyncio.create_task(reloader.watch())
    try:
        path.write_text("limit: 2\n")
        await polls.poll()
        assert _errors(registry, REASON_APPLY) == 1
        path.write_text("limit: 3\n")
        await polls.poll()
        assert applied == [1, 3] and reloader.snapshot.get() == {"limit": 3}
    finally:
        polls.watcher.cancel()


async def test_loading_runs_in_a_worker_thread_while_the_loop_serves(tmp_path: Path) -> None:
    """While a slow loader runs, the event loop keeps running other tasks; the swap and the
    on_swap hook happen back on the loop's thread."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 7\n")
    started, release = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}

    def slow_load() -> dict[str, int]:
        threads["load"] = threading.get_ident()
        started.set()
        # Only a coroutine on the event loop sets ``release``: were this load blocking the
        # loop, the wait would run out (a safety net, not a timing assertion) and fail.
        if not release.wait(timeout=30):
            raise AssertionError("the event loop was blocked while loading")
        return _loader(path)

    def hook(_: dict[str, int]) -> None:
        threads["on_swap"] = threading.get_ident()

    reloader = Reloader(service="test", paths=[path], load=slow_load, snapshot=Snapshot(),
                        registry=CollectorRegistry(), on_swap=hook)
    reload = asyncio.create_task(reloader.reload_async())

    async def serve_a_request() -> str:
        await asyncio.to_thread(started.wait)  # the load is in progress...
        release.set()  # ...and this coroutine still got to run
        return "served"

    assert await serve_a_request() == "served"
    assert await reload is True
    assert reloader.snapshot.get() == {"limit": 7}
    assert threads["load"] != loop_thread and threads["on_swap"] == loop_thread


def test_success_time_comes_from_the_injected_clock(tmp_path: Path) -> None:
    """The last-success gauge reads the injected clock, not the wall clock."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    registry = CollectorRegistry()
    reloader = Reloader(service="test", paths=[path], load=lambda: _loader(path),
                        snapshot=Snapshot(), registry=registry, clock=lambda: 1234.5)
    assert reloader.reload()
    assert registry.get_sample_value(
        "mixer_config_last_success_timestamp_seconds", {"service": "test"}) == 1234.5


def test_config_errors_count_as_invalid_config(tmp_path: Path) -> None:
    """A ConfigError is counted under reason invalid_config (and result=error)."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: lots\n")
    registry = CollectorRegistry()
    assert not _reloader(path, registry).reload()
    assert _errors(registry, REASON_INVALID) == 1 and _count(registry, "error") == 1


def test_fingerprint_skips_vanished_files_and_marks_unreadable_paths(tmp_path: Path) -> None:
    """A dangling entry (file deleted mid-scan) is absent; an unstatable path is a marker."""
    config = tmp_path / "conf"
    config.mkdir()
    (config / "a.yaml").write_text("limit: 1\n")
    (config / "gone.yaml").symlink_to(tmp_path / "deleted.yaml")  # listed, stat fails
    too_long = tmp_path / ("x" * 300)  # stat fails with ENAMETOOLONG
    missing = tmp_path / "missing"
    prints = fingerprint([config, too_long, missing])
    assert [name for name, _, _ in prints] == [str(config / "a.yaml"), str(too_long)]
    assert prints[1][1] == -1 and prints[1][2] == errno.ENAMETOOLONG


def test_fingerprint_survives_permission_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose stat is refused (permission denied) does not break the scan."""
    config = tmp_path / "conf"
    config.mkdir()
    (config / "a.yaml").write_text("limit: 1\n")
    secret = config / "b.yaml"
    secret.write_text("limit: 2\n")
    real_stat = Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert [name for name, _, _ in fingerprint([config])] == [str(config / "a.yaml")]


async def test_watcher_survives_an_unreadable_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config directory that turns unreadable is one counted io_error, not a dead watcher;
    once readable again the next edit applies."""
    config = tmp_path / "conf"
    config.mkdir()
    (config / "c.yaml").write_text("limit: 1\n")
    registry = CollectorRegistry()
    polls = ManualPolls(interval=1.0)
    locked = False
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if locked and self == config:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)

    def load() -> dict[str, int]:
        return _loader(next(config.iterdir()))

    reloader = _watched(config, registry, load, polls)
    assert reloader.reload()
    polls.watcher = asyncio.create_task(reloader.watch())
    try:
        locked = True
        await polls.poll()
        assert _errors(registry, REASON_IO) == 1 and reloader.snapshot.get() == {"limit": 1}
        assert reloader.last_error is not None and reloader.last_error.file == str(config)
        await polls.poll()  # still unreadable, unchanged: not retried, not re-counted
        assert _errors(registry, REASON_IO) == 1
        locked = False
        (config / "c.yaml").write_text("limit: 5\n")
        await polls.poll()
        assert reloader.snapshot.get() == {"limit": 5}
    finally:
        polls.watcher.cancel()
