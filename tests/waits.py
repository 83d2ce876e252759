"""Bounded waits for the real-process tests: poll a condition, fail with a clear message.

A wait's timeout is a generous bound against hanging, never a performance assertion (figures
belong in bench/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def until(check: Callable[[], bool], timeout: float = 10.0, step: float = 0.1,
          what: str = "condition") -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout`` seconds."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(step)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
