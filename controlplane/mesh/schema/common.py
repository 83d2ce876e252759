"""Pieces every Istio schema shares: the strict base model, "not supported" fields, durations.

Istio's CRDs are proto3 messages read through protojson, so YAML keys are the camelCase JSON
names of the proto fields. Each schema model lists them all: the ones we implement with their
types, and the ones Istio has but we do not implement as ``Unsupported`` so that a file using
one fails with ``not supported: <field>`` instead of being silently half-applied. Anything
else is not an Istio field at all and fails as ``unknown key``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

#: The ``type`` of the pydantic error an ``Unsupported`` field raises (see ``errors.py``).
NOT_SUPPORTED = "not_supported"


def _reject(value: Any) -> Any:
    # The message is filled in by the error mapper, which knows the field's name.
    raise PydanticCustomError(NOT_SUPPORTED, "not supported")


#: An Istio field we do not implement: absent is fine, present (even null) fails the load.
Unsupported = Annotated[Any, AfterValidator(_reject)]


def unsupported(alias: str) -> Any:
    """The ``Field`` of an ``Unsupported`` attribute, spelled ``alias`` in YAML."""
    return Field(None, alias=alias)


class Strict(BaseModel):
    """Base of every spec model: unknown keys fail, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class WorkloadSelector(Strict):
    """``workloadSelector`` (ServiceEntry, Sidecar): ``labels`` a workload must all carry."""

    labels: dict[str, str] = {}


class Percent(Strict):
    """Istio's ``Percent``: ``{value: 0..100}``."""

    value: Annotated[float, Field(ge=0, le=100)] = 0.0


PortNumber = Annotated[int, Field(ge=1, le=65535)]

# Go's time.ParseDuration syntax, which Istio's files use ("5s", "1.5s", "100ms", "1h30m").
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string; ValueError when it is not one."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise ValueError(f"invalid duration '{text}' (expected e.g. '5s', '100ms', '1m30s')")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise PydanticCustomError("duration", "expected a duration string such as '5s'")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", str(exc)) from None


#: A ``google.protobuf.Duration`` field: a duration string in YAML, seconds once validated.
Duration = Annotated[float, BeforeValidator(_duration)]


#: Protocols a port may name (Istio's, case-insensitive), and what we can proxy of them.
PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "HTTPS", "TLS", "TCP")


def _protocol(value: str) -> str:
    upper = value.upper()
    if upper and upper not in PROTOCOLS:
        raise PydanticCustomError(
            "protocol", "unsupported protocol '{value}' (expected one of {allowed})",
            {"value": value, "allowed": ", ".join(PROTOCOLS)})
    return upper


#: A port's ``protocol``: upper-cased; empty when the file names none.
Protocol = Annotated[str, AfterValidator(_protocol)]


def reject_values(reasons: dict[str, str]) -> BeforeValidator:
    """A validator for an enum field that fails ``not supported: <value> (<why>)`` for the
    Istio values we do not implement, before the field's own check of the others."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and value in reasons:
            raise PydanticCustomError(
                "not_supported_value", "not supported: {value} ({why})",
                {"value": value, "why": reasons[value]})
        return value

    return BeforeValidator(check)


def _export_to(value: list[str] | None) -> list[str] | None:
    if value is not None and any(v != "*" for v in value):
        raise PydanticCustomError(
            "not_supported_value",
            "not supported: exportTo other than [\"*\"] (there is one flat mesh: every "
            "resource is visible to every proxy)")
    return value


#: ``exportTo``: only Istio's default, ``["*"]`` (everywhere), means something here.
ExportTo = Annotated[list[str] | None, AfterValidator(_export_to)]
