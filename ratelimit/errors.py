"""Exceptions of the rate limit service.

Class tree::

    MixerError                       (envoy_mixer.common.errors)
    ├── ConfigError                  a limits file is invalid (from envoy_mixer.common.errors)
    └── RateLimitError               base of this package's runtime errors
        ├── InvalidRequestError      the request cannot be evaluated (empty domain, no descriptors)
        ├── BackendError             the counter store failed or timed out (Redis down)
        └── RedisUrlError            a Redis URL (or its mode) cannot be used; also a ValueError

Only the gRPC servicer maps these to status codes: InvalidRequestError -> INVALID_ARGUMENT,
BackendError -> UNAVAILABLE. RedisUrlError happens at start-up only: the app turns it into a
setting error (one line on stderr, exit 2).
"""

from __future__ import annotations

from envoy_mixer.common.errors import ConfigError, MixerError

__all__ = ["BackendError", "ConfigError", "InvalidRequestError", "RateLimitError",
           "RedisUrlError"]


class RateLimitError(MixerError):
    """Base class of the rate limit service's runtime errors."""


class InvalidRequestError(RateLimitError):
    """A ShouldRateLimit request that cannot be evaluated (the message says why)."""


class BackendError(RateLimitError):
    """The counter backend failed or did not answer within its timeout.

    ``kind`` is a stable, low-cardinality reason used as a metric label
    (``timeout``, ``connection``, ``response``).
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class RedisUrlError(RateLimitError, ValueError):
    """A Redis URL that cannot be parsed or used in its mode (the message says why)."""
