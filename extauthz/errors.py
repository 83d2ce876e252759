"""Exceptions of the policy service.

Class tree::

    MixerError                      (envoy_mixer.common.errors)
    ├── ConfigError                 a policy file is invalid (file, line, field)
    └── AuthzError                  base of this package's runtime errors
        └── JwksError               a JWKS could not be fetched or parsed
"""

from __future__ import annotations

from envoy_mixer.common.errors import ConfigError, MixerError

__all__ = ["AuthzError", "ConfigError", "JwksError"]


class AuthzError(MixerError):
    """Base class of the policy service's runtime errors."""


class JwksError(AuthzError):
    """A JSON Web Key Set could not be fetched or parsed."""
