"""Envoy rate limit service (``envoy.service.ratelimit.v3``) with envoyproxy/ratelimit's config.

Modules: ``config`` (YAML -> compiled lookup tree), ``limiter`` (pure decisions over a backend),
``backends`` (memory, redis), ``metrics``, ``server`` (gRPC servicer), ``app`` (wiring),
``cli`` (``mixer ratelimit`` / ``python -m ratelimit``).

``RateLimitConfig`` and ``load_config`` are imported on first use, so importing ``ratelimit.cli``
(to register ``mixer ratelimit``) does not load the YAML parser and the config compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratelimit.config import RateLimitConfig, load_config

__all__ = ["RateLimitConfig", "load_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ratelimit import config

        return getattr(config, name)
    raise AttributeError(f"module 'ratelimit' has no attribute {name!r}")
