"""envoy-mixer: Istio's policy, quota and telemetry for any Envoy, without Kubernetes.

This package holds the ``mixer`` CLI and the runtime the three services share: settings,
JSON logging, config loading with line numbers, hot reload and the gRPC/admin server lifecycle.
``python -m envoy_mixer`` is the ``mixer`` command; ``__version__`` is what ``mixer --version``
prints (a test keeps it equal to pyproject's version).
"""

from envoy_mixer.errors import ConfigError, ConfigErrors, MixerError

__all__ = ["ConfigError", "ConfigErrors", "MixerError"]
__version__ = "0.1.0"
