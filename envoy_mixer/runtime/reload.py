"""Validated hot reload of a service's rules files.

A ``Reloader`` polls the config PATH (file or directory) for changes in name, size or mtime,
re-runs the service's ``load`` function and swaps the snapshot only when the whole load
succeeds. Polling (not inotify) is deliberate: it works the same for bind mounts, Kubernetes
ConfigMap symlink swaps and editors that replace files.

A reload cannot take the service down:

- Any exception from ``load`` (a ``ConfigError``, but also an ``OSError`` or a plain bug such as
  a ``KeyError``) keeps the old snapshot, is logged as ``config_load_error`` (file, line and
  field for a ``ConfigError``; type, message and traceback otherwise) and counted in
  ``mixer_config_loads_total{result="error"}`` and ``mixer_config_load_errors_total{reason}``.
- Scanning the files never raises: a file deleted mid-scan is simply absent, an unreadable
  directory becomes a marker entry (so the load that follows reports why).
- The watcher loop survives whatever happens inside one poll and keeps polling.
- ``watch`` scans and loads in a worker thread, so parsing and compiling a large config never
  stalls the requests served on the event loop. The swap and the ``on_swap`` hook run back on
  the loop, where the request path reads the snapshot.

The poll sleep and the wall clock are injected so tests step the watcher without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.logs import log_event
from envoy_mixer.common.snapshot import Snapshot

T = TypeVar("T")
_log = logging.getLogger("envoy_mixer.runtime.reload")

Fingerprint = tuple[tuple[str, int, int], ...]
#: An ``asyncio.sleep``-compatible coroutine function (injected in tests).
Sleep = Callable[[float], Awaitable[None]]

#: Stable values of the ``reason`` label of ``mixer_config_load_errors_total``.
REASON_INVALID = "invalid_config"  # the loader raised ConfigError: the files are wrong
REASON_IO = "io_error"  # the loader raised OSError: the files could not be read
REASON_INTERNAL = "internal_error"  # any other exception from the loader: a bug of ours
REASON_APPLY = "apply_error"  # the on_swap hook raised after a good load
REASONS = (REASON_INVALID, REASON_IO, REASON_INTERNAL, REASON_APPLY)


class ReloadMetrics:
    """Config-load counters shared by every service (one set per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter(
            "mixer_config_loads",
            "Config loads by service and result (success or error).",
            ["service", "result"],
            registry=registry,
        )
        # A separate counter rather than a third label on ``loads``: the existing
        # {service,result} series, dashboards and alerts stay exactly as they were.
        self.errors = Counter(
            "mixer_config_load_errors",
            "Failed config loads by service and reason ("
            + ", ".join(REASONS) + ").",
            ["service", "reason"],
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
    """A cheap signature of the files under ``paths`` that changes when any of them does.

    Never raises ``OSError``: a file that vanishes between listing and ``stat`` counts as
    absent, and a path that cannot be examined at all (permission denied, name too long)
    contributes ``(path, -1, errno)`` so that its becoming readable again is a change too.
    """
    items: list[tuple[str, int, int]] = []
    for root in paths:
        try:
            st = root.stat()
            candidates = sorted(root.iterdir()) if stat.S_ISDIR(st.st_mode) else [root]
        except FileNotFoundError:
            continue  # not there (yet): the same as an empty directory
        except OSError as exc:
            items.append((str(root), -1, exc.errno or 0))
            continue
        for p in candidates:
            try:
                st = p.stat()
            except OSError:
                continue  # deleted mid-scan, or a dangling symlink: not a file to load
            # One stat per file: S_ISREG on its result instead of a second is_file() call.
            if stat.S_ISREG(st.st_mode):
                items.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(items)


@dataclass(frozen=True, slots=True)
class _Attempt(Generic[T]):
    """What one scan-and-load produced (built in a worker thread, applied on the loop)."""

    seen: Fingerprint
    value: T | None
    error: Exception | None


class Reloader(Generic[T]):
    """Loads ``paths`` with ``load`` into ``snapshot``, at start and whenever files change."""

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
        settle: float = 0.05,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``interval``: seconds between polls; ``settle``: wait after a change is seen so an
        editor can finish writing; ``sleep``/``clock``: injected poll sleep and wall clock."""
        self.service = service
        self.paths = list(paths)
        self._load = load
        self.snapshot = snapshot
        self.interval = interval
        self.settle = settle
        self._on_swap = on_swap
        self._sleep = sleep
        self._clock = clock
        self.metrics = ReloadMetrics(registry)
        #: The last failure as a ConfigError (unexpected exceptions are wrapped into one so
        #: ``/config`` shows them the same way); None after a good load.
        self.last_error: ConfigError | None = None
        self._fingerprint: Fingerprint | None = None

    def reload(self) -> bool:
        """Load now, on the calling thread; swap on success, keep the old snapshot on error.

        Returns success. Used at start-up, before anything is served; the watcher uses
        ``reload_async`` instead.
        """
        return self._apply(self._attempt())

    async def reload_async(self) -> bool:
        """Like ``reload`` but scans and loads in a worker thread; swaps on the event loop."""
        return self._apply(await asyncio.to_thread(self._attempt))

    def changed(self) -> bool:
        """True if the files differ from those seen at the last load."""
        return fingerprint(self.paths) != self._fingerprint

    async def watch(self) -> None:
        """Poll forever, reloading on change (run as a background task; cancel to stop)."""
        while True:
            await self._sleep(self.interval)
            try:
                if await asyncio.to_thread(self.changed):
                    # Let an editor finish writing before we read (a write is rarely atomic).
                    await self._sleep(self.settle)
                    await self.reload_async()
            except Exception as exc:
                # reload_async already turns loader errors into counted load errors; this
                # catches anything else (a failing log handler, a bug here) because a dead
                # watcher silently freezes the config until the next restart.
                log_event(
                    _log, "config_watch_error", logging.ERROR, service=self.service,
                    error_type=type(exc).__name__, error=str(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )

    def _attempt(self) -> _Attempt[T]:
        # The fingerprint is taken before loading: an edit that lands during the load
        # differs from it and is picked up by the next poll.
        seen = fingerprint(self.paths)
        try:
            return _Attempt(seen, self._load(), None)
        except Exception as exc:  # any loader failure is a load error, never a crash
            return _Attempt(seen, None, exc)

    def _apply(self, attempt: _Attempt[T]) -> bool:
        self._fingerprint = attempt.seen
        if attempt.error is not None or attempt.value is None:
            self._failed(attempt.error or ConfigError("the loader returned no configuration"))
            return False
        self.snapshot.set(attempt.value)
        if self._on_swap is not None:
            try:
                self._on_swap(attempt.value)
            except Exception as exc:
                # The new snapshot stays: it loaded fine and the hook already ran against
                # it, so going back would leave the hook's side half-applied either way.
                self._failed(exc, reason=REASON_APPLY)
                return False
        self.last_error = None
        self.metrics.loads.labels(self.service, "success").inc()
        self.metrics.last_success.labels(self.service).set(1)
        self.metrics.last_success_time.labels(self.service).set(self._clock())
        log_event(_log, "config_loaded", service=self.service, paths=[str(p) for p in self.paths])
        return True

    def _failed(self, exc: Exception, reason: str | None = None) -> None:
        if reason is None:
            reason = (
                REASON_INVALID if isinstance(exc, ConfigError)
                else REASON_IO if isinstance(exc, OSError)
                else REASON_INTERNAL
            )
        self.metrics.loads.labels(self.service, "error").inc()
        self.metrics.errors.labels(self.service, reason).inc()
        self.metrics.last_success.labels(self.service).set(0)
        kept = self.snapshot.loaded
        if isinstance(exc, ConfigError):
            self.last_error = exc
            for err in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
                log_event(
                    _log, "config_load_error", logging.ERROR,
                    service=self.service, reason=reason, error=str(err), kept_previous=kept,
                    **{k: v for k, v in err.to_dict().items() if k != "message"},
                )
            return
        message = f"{type(exc).__name__}: {exc}"
        filename = getattr(exc, "filename", None)  # set by most OSErrors
        self.last_error = ConfigError(
            message, file=str(filename) if filename is not None else None
        )
        log_event(
            _log, "config_load_error", logging.ERROR,
            service=self.service, reason=reason, error=message, kept_previous=kept,
            error_type=type(exc).__name__, file=self.last_error.file,
            traceback="".join(traceback.format_exception(exc)),
        )
