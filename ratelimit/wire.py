"""Protobuf wire format of ShouldRateLimit, decoded and encoded by hand on the hot path.

Why: with grpcio's Python stack a call costs a few hundred µs of CPU, and going through the
generated classes (parse, then ``HasField`` and attribute access per descriptor and entry, then
building nested response messages) added more than the whole rate-limit decision. Reading the
few fields we need straight from the bytes, and writing the response bytes with prebuilt
``current_limit`` parts, is 2x cheaper (measured in bench/ratelimit_bench.py). Only
``RateLimitRequest`` / ``RateLimitResponse`` are handled; unknown fields are skipped as the
protobuf spec requires. ``server.to_request``/``server.to_response`` (generated classes) are the
reference the tests compare this module with, message by message.

Field numbers (envoy.service.ratelimit.v3, envoy.extensions.common.ratelimit.v3):
RateLimitRequest{domain=1, descriptors=2, hits_addend=3};
RateLimitDescriptor{entries=1, limit=2, hits_addend=3 (UInt64Value{value=1})};
Entry{key=1, value=2}; RateLimitOverride{requests_per_unit=1, unit=2};
RateLimitResponse{overall_code=1, statuses=2, response_headers_to_add=3, dynamic_metadata=6};
DescriptorStatus{code=1, current_limit=2, limit_remaining=3, duration_until_reset=4};
RateLimit{requests_per_unit=1, unit=2, name=3}; Duration{seconds=1}; HeaderValue{key=1, value=2}.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from ratelimit.config import Limit
from ratelimit.limiter import Decision, Descriptor, Request

__all__ = ["WireError", "decode_request", "encode_response", "encode_struct"]

# RateLimitResponse.RateLimit.Unit numbers; the override's envoy.type.v3.RateLimitUnit has no
# WEEK (its 5 and 6 are MONTH and YEAR in both enums).
_UNIT_NUMBER = {
    "second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7,
}
_OVERRIDE_UNITS = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year"}


class WireError(ValueError):
    """The request bytes are not a valid RateLimitRequest."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    """Position after an unknown field's value."""
    if wire_type == 0:
        return _varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        length, pos = _varint(buf, pos)
        return pos + length
    if wire_type == 5:
        return pos + 4
    raise WireError(f"unsupported wire type {wire_type}")


def _entry(buf: bytes, pos: int, end: int) -> tuple[str, str]:
    key = value = ""
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A or tag == 0x12:
            # Single-byte lengths (< 128) are the norm; longer ones take the general path.
            length = buf[pos + 1]
            if length < 0x80:
                pos += 2
            else:
                length, pos = _varint(buf, pos + 1)
            text = buf[pos:pos + length].decode()
            pos += length
            if tag == 0x0A:
                key = text
            else:
                value = text
        else:
            tag, pos = _varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    if pos != end:
        raise WireError("truncated entry")
    return key, value


def _varint_field(buf: bytes, pos: int, end: int, number: int) -> dict[int, int]:
    """Varint fields of a small submessage (override, UInt64Value) by field number."""
    out: dict[int, int] = {}
    while pos < end:
        tag, pos = _varint(buf, pos)
        if tag & 7 == 0:
            out[tag >> 3], pos = _varint(buf, pos)
        else:
            pos = _skip(buf, pos, tag & 7)
    if pos != end:
        raise WireError(f"truncated field {number}")
    return out


def _descriptor(buf: bytes, pos: int, end: int) -> Descriptor:
    entries: list[tuple[str, str]] = []
    hits: int | None = None
    override: Limit | None = None
    while pos < end:
        tag = buf[pos]
        if tag >= 0x80 or tag & 7 != 2:
            tag, pos = _varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
            continue
        length = buf[pos + 1]
        if length < 0x80:
            pos += 2
        else:
            length, pos = _varint(buf, pos + 1)
        stop = pos + length
        if stop > end:
            raise WireError("truncated descriptor")
        if tag == 0x0A:
            entries.append(_entry(buf, pos, stop))
        elif tag == 0x1A:
            hits = _varint_field(buf, pos, stop, 3).get(1, 0)
        elif tag == 0x12:
            fields = _varint_field(buf, pos, stop, 2)
            unit = _OVERRIDE_UNITS.get(fields.get(2, 0))
            if unit is not None:
                override = Limit(unit=unit, requests_per_unit=fields.get(1, 0))
        pos = stop
    if pos != end:
        raise WireError("truncated descriptor")
    if hits is None and override is None:
        return Descriptor(tuple(entries))
    return Descriptor(tuple(entries), hits, override)


def decode_request(buf: bytes) -> Request:
    """A serialized RateLimitRequest -> Request; raises WireError on malformed input."""
    try:
        pos, end = 0, len(buf)
        domain = ""
        hits = 0
        descriptors: list[Descriptor] = []
        while pos < end:
            tag, pos = _varint(buf, pos)
            if tag == 0x0A or tag == 0x12:
                length, pos = _varint(buf, pos)
                stop = pos + length
                if stop > end:
                    raise WireError("truncated field")
                if tag == 0x0A:
                    domain = buf[pos:stop].decode()
                else:
                    descriptors.append(_descriptor(buf, pos, stop))
                pos = stop
            elif tag == 0x18:
                hits, pos = _varint(buf, pos)
                hits &= 0xFFFFFFFF
            else:
                pos = _skip(buf, pos, tag & 7)
        if pos != end:
            raise WireError("truncated message")
    except (IndexError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed RateLimitRequest: {exc}") from exc
    return Request(domain, tuple(descriptors), hits)


def _encode_varint(value: int) -> bytes:
    # Unrolled up to 4 bytes (values below 2**28): remaining counts of large limits are the
    # common multi-byte case, and the generic loop cost more than the rest of a status.
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                      ((value >> 14) & 0x7F) | 0x80, value >> 21))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _length_delimited(tag: bytes, body: bytes) -> bytes:
    return tag + _encode_varint(len(body)) + body


class _LimitParts:
    """Encoded ``code`` + ``current_limit`` fields per (code, Limit), built once.

    Keyed by ``id()`` with the Limit kept alive in the value, so an id cannot be reused while
    cached; cleared past a bound (config limits are few; per-request overrides are not).
    """

    def __init__(self) -> None:
        self._parts: dict[int, tuple[Limit, bytes, bytes]] = {}

    def get(self, lim: Limit, code: int) -> bytes:
        hit = self._parts.get(id(lim))
        if hit is None:
            hit = self._build(lim)
        return hit[code]  # type: ignore[return-value]  # index 1 or 2: the bytes parts

    def _build(self, lim: Limit) -> tuple[Limit, bytes, bytes]:
        body = b""
        if lim.requests_per_unit:
            body += b"\x08" + _encode_varint(lim.requests_per_unit)
        body += b"\x10" + _encode_varint(_UNIT_NUMBER[lim.unit])
        if lim.name:
            body += _length_delimited(b"\x1a", lim.name.encode())
        part = _length_delimited(b"\x12", body)
        if len(self._parts) > 10_000:
            self._parts.clear()
        hit = (lim, b"\x08\x01" + part, b"\x08\x02" + part)
        self._parts[id(lim)] = hit
        return hit


_LIMITS = _LimitParts()
# DescriptorStatus without a limit, by code (remaining 0: the common "no limit" answer).
_NO_LIMIT_STATUS = {code: _length_delimited(b"\x12", b"\x08" + bytes((code,))) for code in (1, 2)}
# duration_until_reset fields for resets up to an hour (longer ones are encoded per call).
_DURATIONS = [b"\x22\x00"] + [
    _length_delimited(b"\x22", b"\x08" + _encode_varint(s)) for s in range(1, 3601)
]


def encode_response(decision: Decision) -> bytes:
    """A Decision -> serialized RateLimitResponse."""
    out = [b"\x08", _SMALL[int(decision.overall)]]
    limits = _LIMITS
    durations = _DURATIONS
    for code, lim, remaining, reset in decision.statuses:
        if lim is None:
            if not remaining:
                out.append(_NO_LIMIT_STATUS[code])
                continue
            body = b"\x08" + _SMALL[code] + b"\x18" + _encode_varint(remaining)
        else:
            seconds = reset or 0
            duration = (durations[seconds] if seconds <= 3600
                        else _length_delimited(b"\x22", b"\x08" + _encode_varint(seconds)))
            if remaining:
                body = limits.get(lim, code) + b"\x18" + _encode_varint(remaining) + duration
            else:
                body = limits.get(lim, code) + duration
        size = len(body)
        out.append(b"\x12" + (_SMALL[size] if size < 0x80 else _encode_varint(size)))
        out.append(body)
    for key, value in decision.headers:
        header = _length_delimited(b"\x0a", key.encode()) + _length_delimited(
            b"\x12", value.encode()
        )
        out.append(_length_delimited(b"\x1a", header))
    if decision.metadata is not None:
        out.append(_length_delimited(b"\x32", encode_struct(decision.metadata)))
    return b"".join(out)


def encode_struct(data: Mapping[str, Any]) -> bytes:
    """``google.protobuf.Struct`` bytes for JSON-like data (the response's dynamic_metadata)."""
    out = []
    for key, value in data.items():
        entry = _length_delimited(b"\x0a", str(key).encode()) + _length_delimited(
            b"\x12", _encode_value(value))
        out.append(_length_delimited(b"\x0a", entry))
    return b"".join(out)


def _encode_value(value: Any) -> bytes:
    """``google.protobuf.Value`` bytes: null, number, string, bool, struct or list."""
    if value is None:
        return b"\x08\x00"
    if isinstance(value, bool):
        return b"\x20" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        return b"\x11" + struct.pack("<d", float(value))
    if isinstance(value, Mapping):
        return _length_delimited(b"\x2a", encode_struct(value))
    if isinstance(value, (list, tuple)):
        items = b"".join(_length_delimited(b"\x0a", _encode_value(v)) for v in value)
        return _length_delimited(b"\x32", items)
    return _length_delimited(b"\x1a", str(value).encode())
