"""Structured JSON logging, configured once per process.

Every record becomes one JSON line: ``{"ts", "level", "logger", "event", ...fields}``. Call
sites name a snake_case event and pass fields through ``log_event`` so that deny decisions,
reload errors and audit events are machine-readable without parsing prose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_FIELDS_ATTR = "mixer_fields"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    # Deny and audit lines are written on the request path: the formatted second is cached so
    # most lines skip strftime.
    _second: int = -1
    _second_text: str = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        payload: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, _FIELDS_ATTR, None)
        if fields:
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records as JSON lines to ``stream`` (stderr by default)."""
    # Our JSON lines print none of these, and collecting them costs more than the rest of a
    # record (a thread and process lookup per line).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's and aiohttp's own chatter is useful only when debugging.
    for noisy in ("aiohttp.access", "grpc"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a snake_case ``event`` with structured ``fields`` (skipped cheaply if disabled).

    The record is built directly rather than through ``logger.log``: that path walks the
    stack to find the caller's file and line (most of its cost), which our JSON lines never
    print, and some events (every deny) are logged on the request path.
    """
    if logger.isEnabledFor(level):
        record = logger.makeRecord(
            logger.name, level, "", 0, event, (), None, extra={_FIELDS_ATTR: fields}
        )
        logger.handle(record)
