"""Exceptions of the telemetry service.

Class tree::

    MixerError                      (envoy_mixer.common.errors)
    ├── ConfigError                 a telemetry config file is invalid (file, line, field)
    └── TelemetryError              base of this package's runtime errors
        └── MalformedEntryError     an access-log entry cannot be mapped to metrics

Only the servicer decides what a ``MalformedEntryError`` means on the wire: it counts the entry
as dropped and keeps the stream open, because ALS is fire-and-forget and Envoy ignores answers.
"""

from __future__ import annotations

from envoy_mixer.common.errors import ConfigError, MixerError

__all__ = ["ConfigError", "MalformedEntryError", "TelemetryError"]


class TelemetryError(MixerError):
    """Base class of the telemetry service's runtime errors."""


class MalformedEntryError(TelemetryError):
    """An access-log entry lacks what the metrics need (e.g. a batch of an unknown type)."""
