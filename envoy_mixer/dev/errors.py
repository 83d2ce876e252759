"""Exceptions of local orchestration (kept apart so ``mixer up --help`` imports nothing heavy)."""

from __future__ import annotations

from envoy_mixer.common.errors import MixerError

__all__ = ["UpError"]


class UpError(MixerError):
    """``mixer up`` cannot start: a clear, user-facing reason."""
