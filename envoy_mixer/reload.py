"""Validated hot reload of a service's rules files.

A ``Reloader`` polls the config PATH (file or directory) for changes in name, size or mtime,
re-runs the service's ``load`` function and swaps the snapshot only when the whole load
succeeds. A failed load keeps the old snapshot, logs ``config_load_error`` with file, line and
field, and counts it. Polling (not inotify) is deliberate: it works the same for bind mounts,
Kubernetes ConfigMap symlink swaps and editors that replace files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from envoy_mixer.errors import ConfigError, ConfigErrors
from envoy_mixer.logs import log_event
from envoy_mixer.snapshot import Snapshot

T = TypeVar("T")
_log = logging.getLogger("envoy_mixer.reload")

Fingerprint = tuple[tuple[str, int, int], ...]


class ReloadMetrics:
    """Config-load counters shared by every service (one set per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter(
            "mixer_config_loads",
            "Config loads by service and result (success or error).",
            ["service", "result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "mixer_config_last_load_success",
            "1 if the last config load succeeded, 0 if it failed.",
            ["service"],
            registry=registry,
        )
        self.last_success_time = Gauge(
            "mixer_config_last_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            ["service"],
            registry=registry,
        )


def fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """A cheap signature of the files under ``paths`` that changes when any of them does."""
    items: list[tuple[str, int, int]] = []
    for root in paths:
        candidates = sorted(root.iterdir()) if root.is_dir() else [root]
        for p in candidates:
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                items.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(items)


class Reloader(Generic[T]):
    """Loads ``path`` with ``load`` into ``snapshot``, at start and whenever files change."""

    def __init__(
        self,
        *,
        service: str,
        paths: Sequence[Path],
        load: Callable[[], T],
        snapshot: Snapshot[T],
        registry: CollectorRegistry,
        interval: float = 0.5,
        on_swap: Callable[[T], None] | None = None,
    ) -> None:
        self.service = service
        self.paths = list(paths)
        self._load = load
        self.snapshot = snapshot
        self.interval = interval
        self._on_swap = on_swap
        self.metrics = ReloadMetrics(registry)
        self.last_error: ConfigError | None = None
        self._fingerprint: Fingerprint | None = None

    def reload(self) -> bool:
        """Load now; swap on success, keep the old snapshot on error. Returns success."""
        self._fingerprint = fingerprint(self.paths)
        try:
            value = self._load()
        except ConfigError as exc:
            self.last_error = exc
            self.metrics.loads.labels(self.service, "error").inc()
            self.metrics.last_success.labels(self.service).set(0)
            errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            for err in errors:
                log_event(
                    _log, "config_load_error", logging.ERROR,
                    service=self.service, error=str(err), kept_previous=self.snapshot.loaded,
                    **{k: v for k, v in err.to_dict().items() if k != "message"},
                )
            return False
        self.snapshot.set(value)
        if self._on_swap is not None:
            self._on_swap(value)
        self.last_error = None
        self.metrics.loads.labels(self.service, "success").inc()
        self.metrics.last_success.labels(self.service).set(1)
        self.metrics.last_success_time.labels(self.service).set(time.time())
        log_event(_log, "config_loaded", service=self.service, paths=[str(p) for p in self.paths])
        return True

    def changed(self) -> bool:
        """True if the files differ from those seen at the last load."""
        return fingerprint(self.paths) != self._fingerprint

    async def watch(self) -> None:
        """Poll forever, reloading on change (run as a background task)."""
        while True:
            await asyncio.sleep(self.interval)
            if self.changed():
                # Let an editor finish writing before we read (a write is rarely atomic).
                await asyncio.sleep(0.05)
                self.reload()
