"""Per-second limits on their own store: envoyproxy/ratelimit's REDIS_PERSECOND_* split.

The reference can send counters of limits whose unit is ``second`` to a second Redis (they are
the hottest keys and need no durability), everything else to the main one. ``PerSecondSplit``
does the same over any two backends: each batch is split by unit, both halves are applied
concurrently, and the results are put back in request order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ratelimit.backends.base import Backend, CounterOp

__all__ = ["PerSecondSplit", "is_per_second"]


def is_per_second(op: CounterOp) -> bool:
    """True for the op of a per-second limit.

    An op's ``ttl`` is its window (fixed) or two windows (sliding, ``prev_key`` set), so the
    unit needs no extra field on the hot path.
    """
    return op.ttl == (1 if op.prev_key is None else 2)


class PerSecondSplit:
    """Per-second ops to ``per_second``, all others to ``main``."""

    def __init__(self, main: Backend, per_second: Backend) -> None:
        self.main = main
        self.per_second = per_second
        self.name = main.name
        self.url = getattr(main, "url", None)
        self.per_second_url = getattr(per_second, "url", None)

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        """Apply each half on its backend (concurrently), results in the order of ``ops``."""
        fast = [i for i, op in enumerate(ops) if is_per_second(op)]
        if not fast:
            return await self.main.apply(ops)
        if len(fast) == len(ops):
            return await self.per_second.apply(ops)
        chosen = set(fast)
        slow = [i for i in range(len(ops)) if i not in chosen]
        fast_out, slow_out = await asyncio.gather(
            self.per_second.apply([ops[i] for i in fast]),
            self.main.apply([ops[i] for i in slow]),
        )
        out = [0] * len(ops)
        for indexes, values in ((fast, fast_out), (slow, slow_out)):
            for i, value in zip(indexes, values, strict=True):
                out[i] = value
        return out

    async def ping(self, budget: float | None = None) -> bool:
        """True if both stores answer (stores without ``ping`` count as answering)."""
        results = []
        for backend in (self.main, self.per_second):
            ping = getattr(backend, "ping", None)
            results.append(True if ping is None else await ping(budget))
        return all(results)

    def healthy(self) -> bool:
        """Healthy only while both stores are."""
        return self.main.healthy() and self.per_second.healthy()

    async def close(self) -> None:
        """Close both stores."""
        await self.main.close()
        await self.per_second.close()
