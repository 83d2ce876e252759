"""A memory backend that records what the limiter asks of it (limiter and reference tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ratelimit.backends.base import CounterOp
from ratelimit.backends.memory import MemoryBackend
from ratelimit.limiter import Limiter, LimiterSettings


class RecordingBackend(MemoryBackend):
    """A memory backend that records each batch of ops it is asked to apply."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.batches: list[list[CounterOp]] = []

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        self.batches.append(list(ops))
        return await super().apply(ops)


def recording_limiter(clock: Any, **settings: Any) -> Limiter:
    """A limiter over a fresh RecordingBackend, with ``settings`` for LimiterSettings."""
    return Limiter(RecordingBackend(clock), LimiterSettings(**settings), clock=clock)
