"""A reference to the current compiled config, swapped whole on reload.

Readers call ``get()`` on every request and see either the old or the new snapshot, never a
half-built one: reload builds the new object completely, then swaps one attribute.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from envoy_mixer.common.errors import MixerError

T = TypeVar("T")


class NotLoadedError(MixerError):
    """No configuration has loaded successfully yet."""


class Snapshot(Generic[T]):
    """Holds the current value of a compiled config."""

    __slots__ = ("_value",)

    def __init__(self, value: T | None = None) -> None:
        self._value = value

    @property
    def loaded(self) -> bool:
        """True once a config has been set."""
        return self._value is not None

    def get(self) -> T:
        """The current config; raises NotLoadedError before the first good load."""
        value = self._value
        if value is None:
            raise NotLoadedError("no configuration loaded")
        return value

    def set(self, value: T) -> None:
        """Swap in a fully built config."""
        self._value = value
