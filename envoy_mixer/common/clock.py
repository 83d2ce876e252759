"""Clocks, injected wherever time matters (windows, token expiry, TTLs, idle series, polls).

A clock is a zero-argument callable returning seconds as a float, so a test passes a lambda
over a variable it advances, and production passes one of the two defaults below. Wall time
is for what is compared with the outside world (epoch-aligned rate-limit windows, JWT ``exp``,
timestamps in logs); monotonic time for durations and ages, which must not jump with NTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds, as returned by ``time.time`` or ``time.monotonic`` (or a test's fake).
Clock = Callable[[], float]

#: Seconds since the epoch: windows aligned to the epoch, token expiry, log timestamps.
wall: Clock = time.time
#: Seconds on a clock that never goes back: durations, ages, timeouts.
monotonic: Clock = time.monotonic

__all__ = ["Clock", "monotonic", "wall"]
