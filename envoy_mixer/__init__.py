"""envoy-mixer: Istio's policy, quota and telemetry for any Envoy, without Kubernetes.

This package holds the ``mixer`` CLI and the runtime the three services share: settings,
JSON logging, config loading with line numbers, hot reload and the gRPC/admin server lifecycle.
"""

from envoy_mixer.errors import ConfigError, ConfigErrors, MixerError

__all__ = ["ConfigError", "ConfigErrors", "MixerError"]
__version__ = "0.1.0"
