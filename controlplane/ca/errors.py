"""Exceptions of the mesh CA.

Class tree::

    MixerError                  (envoy_mixer.common.errors)
    └── CAError                 base of every CA failure
        ├── InvalidIdentity     a trust domain, namespace or service account is not valid
        ├── InvalidDuration     a TTL such as "24h" cannot be parsed or is out of range
        ├── CANotInitialized    the CA directory holds no usable signer
        └── InvalidCA           the signer files exist but are inconsistent or unusable
"""

from __future__ import annotations

from envoy_mixer.common.errors import MixerError

__all__ = ["CAError", "CANotInitialized", "InvalidCA", "InvalidDuration", "InvalidIdentity"]


class CAError(MixerError):
    """Base class of the CA's errors; messages never contain key material."""


class InvalidIdentity(CAError):
    """A SPIFFE identity part (trust domain, namespace, service account) is not valid."""


class InvalidDuration(CAError):
    """A duration string is malformed, not positive, or beyond the allowed maximum."""


class CANotInitialized(CAError):
    """The CA directory has no signer yet (``mixer ca init`` was not run)."""


class InvalidCA(CAError):
    """The CA files are present but unusable (mismatched key, broken chain, not a CA, ...)."""
