"""Envoy rate limit service (``envoy.service.ratelimit.v3``) with envoyproxy/ratelimit's config.

Modules: ``config`` (YAML -> compiled lookup tree), ``limiter`` (pure decisions over a backend),
``backends`` (memory, redis), ``metrics``, ``server`` (gRPC servicer), ``app`` (wiring),
``cli`` (``mixer ratelimit`` / ``python -m ratelimit``).
"""

from ratelimit.config import RateLimitConfig, load_config

__all__ = ["RateLimitConfig", "load_config"]
