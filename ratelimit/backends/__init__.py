"""Counter backends behind one protocol: ``memory`` (embedded default) and ``redis``."""

from __future__ import annotations

from ratelimit.backends.base import Backend, CounterOp
from ratelimit.backends.memory import MemoryBackend

__all__ = ["Backend", "CounterOp", "MemoryBackend", "create_backend"]


def create_backend(
    kind: str,
    *,
    redis_url: str | None = None,
    redis_mode: str = "single",
    redis_timeout: float = 0.25,
    redis_pool_size: int = 4,
    redis_prefix: str = "mixer:rl:",
) -> Backend:
    """The backend named ``kind`` (``memory`` or ``redis``)."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        from ratelimit.backends.redis import RedisBackend

        if not redis_url:
            raise ValueError("the redis backend needs --redis-url")
        return RedisBackend(
            redis_url, mode=redis_mode, timeout=redis_timeout, pool_size=redis_pool_size,
            prefix=redis_prefix,
        )
    raise ValueError(f"unknown backend {kind!r} (memory or redis)")
