"""Access logs: each entry as one JSON line (stdout or a file), sampled, errors always kept.

A line carries the fields Envoy sent (timings, sizes, codes, flags, request properties, the
logged headers) and the Istio identity labels we derived, so ``jq`` can answer "who called
whom and what went wrong" without a second lookup. ``sampling`` keeps that fraction of ordinary
entries; entries with a 5xx (or no response) or any response flag are always written.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from telemetry.entries import HttpEntry, TcpEntry, TlsInfo
from telemetry.identity import NodeIdentity
from telemetry.labels import ISTIO_LABELS

#: The identity labels copied into every line (the rest are in the entry's own fields).
_IDENTITY = tuple(i for i, n in enumerate(ISTIO_LABELS)
                  if n.startswith(("reporter", "source_", "destination_"))
                  or n == "connection_security_policy")


def is_error(entry: HttpEntry | TcpEntry) -> bool:
    """True for entries that must never be sampled away."""
    if entry.response_flags != "-":
        return True
    if isinstance(entry, HttpEntry):
        return entry.response_code >= 500 or entry.response_code == 0
    return False


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def entry_record(
    entry: HttpEntry | TcpEntry, node: NodeIdentity, values: Sequence[str]
) -> dict[str, Any]:
    """The JSON object written for one entry."""
    record: dict[str, Any] = {"type": "http" if isinstance(entry, HttpEntry) else "tcp"}
    data: dict[str, Any] = {}
    for f in fields(entry):
        value = getattr(entry, f.name)
        if isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, TlsInfo):
            value = {"peer_uri": value.peer_uri, "local_uri": value.local_uri}
        data[f.name] = value
    data["start_time"] = _iso(entry.start_time) if entry.start_time else None
    if isinstance(entry, TcpEntry):
        data["event"] = entry.event.value
    record.update({k: v for k, v in data.items() if v not in (None, "", {})})
    record["node_id"] = node.node_id
    for i in _IDENTITY:
        record[ISTIO_LABELS[i]] = values[i]
    return record


class AccessLogWriter:
    """Writes sampled JSON lines; call ``close()`` at shutdown."""

    def __init__(
        self,
        output: str = "stdout",
        sampling: float = 1.0,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.output = output
        self.sampling = sampling
        self._rng = rng
        self._stream: TextIO
        self._owned = output not in ("stdout", "-", "stderr")
        if output in ("stdout", "-"):
            self._stream = sys.stdout
        elif output == "stderr":
            self._stream = sys.stderr
        else:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            # Kept open for the service's lifetime and closed in close(): no `with` here.
            self._stream = Path(output).open(  # noqa: SIM115
                "a", encoding="utf-8", buffering=1 << 16)
        self.written = 0
        self.sampled_out = 0

    def write(self, entry: HttpEntry | TcpEntry, node: NodeIdentity, values: Sequence[str]) -> bool:
        """Write ``entry`` unless sampled away; returns whether it was written."""
        if self.sampling < 1.0 and not is_error(entry) and self._rng() >= self.sampling:
            self.sampled_out += 1
            return False
        self._stream.write(json.dumps(entry_record(entry, node, values), separators=(",", ":"),
                                      default=str))
        self._stream.write("\n")
        self.written += 1
        return True

    def flush(self) -> None:
        """Push buffered lines to the file."""
        self._stream.flush()

    def close(self) -> None:
        """Flush, and close the file if we opened it."""
        self.flush()
        if self._owned:
            self._stream.close()
