"""The embedded in-process backend: counters in a dict, nothing to run beside the service.

Exact for one process (the event loop runs each batch without interleaving); replicas do not
share counters, so use the Redis backend for more than one replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from ratelimit.backends.base import CounterOp

# Expired counters are swept when the table grows past this many keys since the last sweep, so
# memory stays proportional to the live keys without a timer task.
_SWEEP_EVERY = 10_000


class MemoryBackend:
    """Counters in process memory with per-key expiry (``clock`` is injectable for tests)."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}
        self._next_sweep = _SWEEP_EVERY

    def _get(self, key: str, now: float) -> int:
        item = self._counts.get(key)
        if item is None or item[1] <= now:
            return 0
        return item[0]

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        """Apply every op (no await inside: the batch is atomic on the event loop)."""
        now = self._clock()
        counts = self._counts
        out: list[int] = []
        for key, addend, ttl, prev_key, prev_weight, limit in ops:
            item = counts.get(key)
            current = 0 if item is None or item[1] <= now else item[0]
            if prev_key is None:
                current += addend
                counts[key] = (current, now + ttl)
                out.append(current)
                continue
            estimate = math.floor(self._get(prev_key, now) * prev_weight) + current
            if estimate + addend <= limit and addend:
                counts[key] = (current + addend, now + ttl)
            out.append(estimate + addend)
        if len(counts) >= self._next_sweep:
            self._sweep(now)
        return out

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, exp) in self._counts.items() if exp <= now]:
            del self._counts[key]
        self._next_sweep = len(self._counts) + _SWEEP_EVERY

    def __len__(self) -> int:
        return len(self._counts)

    async def close(self) -> None:
        """Nothing to release."""

    def healthy(self) -> bool:
        """Always reachable."""
        return True
