"""Go-style durations for TTLs: ``24h``, ``90m``, ``1h30m``, ``45s``.

The same spelling as Istio's ``--workload-cert-ttl`` (a Go ``time.Duration``), limited to the
units that make sense for certificates (hours, minutes, seconds).
"""

from __future__ import annotations

import re
from datetime import timedelta

from controlplane.ca.errors import InvalidDuration

__all__ = ["format_duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str, *, maximum: timedelta | None = None) -> timedelta:
    """Parse a positive duration; raise InvalidDuration if malformed, zero or above ``maximum``."""
    value = text.strip()
    pos = 0
    seconds = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise InvalidDuration(f"invalid duration '{text}' (expected e.g. '24h', '90m', '1h30m')")
    result = timedelta(seconds=seconds)
    if result <= timedelta(0):
        raise InvalidDuration(f"duration '{text}' must be positive")
    if maximum is not None and result > maximum:
        raise InvalidDuration(f"duration '{text}' exceeds the maximum {format_duration(maximum)}")
    return result


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way ``parse_duration`` reads it (``36h0m0s`` -> ``36h``)."""
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0s"
