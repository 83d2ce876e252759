"""Validated hot reload: good changes apply, bad ones keep the old snapshot and are counted."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from envoy_mixer.errors import ConfigError
from envoy_mixer.reload import Reloader
from envoy_mixer.snapshot import NotLoadedError, Snapshot
from envoy_mixer.yamlsrc import load_file


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


async def test_watch_applies_a_good_change(tmp_path: Path) -> None:
    """Editing the file is picked up by the watcher without a restart."""
    path = tmp_path / "c.yaml"
    path.write_text("limit: 1\n")
    reloader = _reloader(path, CollectorRegistry())
    reloader.reload()
    task = asyncio.create_task(reloader.watch())
    try:
        path.write_text("limit: 22\n")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if reloader.snapshot.get()["limit"] == 22:
                break
        assert reloader.snapshot.get() == {"limit": 22}
    finally:
        task.cancel()


def test_log_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    """configure_logging emits one JSON object per event with its fields."""
    import sys

    from envoy_mixer.logs import configure_logging, log_event

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
