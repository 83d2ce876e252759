"""Exceptions shared by every envoy-mixer service.

Class tree::

    MixerError
    └── ConfigError          a rules file (policy, limits, telemetry) is invalid
        └── ConfigErrors     several ConfigErrors found in one load, reported together
"""

from __future__ import annotations

from collections.abc import Sequence


class MixerError(Exception):
    """Base class of all envoy-mixer errors."""


class ConfigError(MixerError):
    """A configuration file is invalid.

    ``str()`` gives ``"<file>: <message>"`` followed by `` (line N, field F)`` when known,
    so the text starts exactly like envoyproxy/ratelimit's errors while still naming the line
    and the field that an operator needs to fix.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.file}: {self.message}" if self.file else self.message
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f"field {self.field}")
        return f"{text} ({', '.join(where)})" if where else text

    def to_dict(self) -> dict[str, object]:
        """The error as a JSON-friendly dict, for logs and ``/config``."""
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class ConfigErrors(ConfigError):
    """Several configuration errors from one load; ``errors`` holds each of them."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, field=first.field)

    def __str__(self) -> str:
        return "; ".join(ConfigError.__str__(e) for e in self.errors)
