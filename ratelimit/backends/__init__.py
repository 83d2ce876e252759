"""Counter backends behind one protocol: ``memory`` (embedded default) and ``redis``.

``redis`` may take a second Redis for per-second limits (the reference's REDIS_PERSECOND_*).
"""

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
    expiration_jitter: int = 0,
    per_second_url: str | None = None,
    per_second_mode: str = "single",
    per_second_pool_size: int = 4,
) -> Backend:
    """The backend named ``kind`` (``memory`` or ``redis``).

    With ``per_second_url``, the redis backend keeps per-second limits on that second Redis.
    """
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        from ratelimit.backends.redis import RedisBackend

        if not redis_url:
            raise ValueError("the redis backend needs --redis-url")
        main = RedisBackend(
            redis_url, mode=redis_mode, timeout=redis_timeout, pool_size=redis_pool_size,
            prefix=redis_prefix, expiration_jitter=expiration_jitter,
        )
        if not per_second_url:
            return main
        from ratelimit.backends.persecond import PerSecondSplit

        return PerSecondSplit(main, RedisBackend(
            per_second_url, mode=per_second_mode, timeout=redis_timeout,
            pool_size=per_second_pool_size, prefix=redis_prefix,
            expiration_jitter=expiration_jitter,
        ))
    raise ValueError(f"unknown backend {kind!r} (memory or redis)")
