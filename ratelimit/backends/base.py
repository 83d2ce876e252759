"""The counter-store protocol every backend implements.

The limiter ("how to count": fixed or sliding window, keys, windows, addends) turns a request
into a list of ``CounterOp``; a backend ("where to count") applies the whole list in one call and
returns one integer per op. One call per ShouldRateLimit is what lets the Redis backend use one
round trip whatever the number of descriptors.

Op semantics (identical in every backend, and atomic per op):

- fixed window (``prev_key is None``): ``INCRBY key addend`` and expire it after ``ttl`` seconds;
  result = the counter after the increment. An addend of 0 only reads.
- sliding window (``prev_key`` set): estimate = ``floor(prev * prev_weight) + current``; if
  ``estimate + addend <= limit`` increment ``key`` by ``addend`` (expiry ``ttl``); result =
  ``estimate + addend`` either way. A rejected hit is not counted, so a client that keeps
  hammering is not locked out for longer than the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class CounterOp(NamedTuple):
    """One counter update; see the module docstring for what each field means.

    A NamedTuple rather than a frozen dataclass: built per descriptor per call, it is 2-3x
    cheaper to construct and just as immutable.
    """

    key: str
    addend: int
    ttl: int
    prev_key: str | None = None
    prev_weight: float = 0.0
    limit: int = 0


class Backend(Protocol):
    """A counter store: applies a batch of ops atomically per op, in one call."""

    name: str

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        """Apply ``ops`` and return one result per op, in order; raise BackendError on failure."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    def healthy(self) -> bool:
        """False while the store is known to be unreachable (for readiness)."""
        ...
