"""Exceptions of the telemetry service.

Class tree::

    MixerError                      (envoy_mixer.common.errors)
    └── ConfigError                 a telemetry config file is invalid (file, line, field)

There is no runtime error class: ALS is fire-and-forget (Envoy ignores answers), so the servicer
never fails a stream for one odd entry; what it cannot map it counts as dropped.
"""

from __future__ import annotations

from envoy_mixer.common.errors import ConfigError, MixerError

__all__ = ["ConfigError", "MixerError"]
