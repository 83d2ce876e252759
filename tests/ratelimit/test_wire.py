"""The hand-written wire codec agrees with the generated protobuf classes."""

from __future__ import annotations

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import wrappers_pb2

from ratelimit.config import Limit
from ratelimit.limiter import MAX_REMAINING, Code, Decision, Status
from ratelimit.server import to_request, to_response
from ratelimit.wire import WireError, decode_request, encode_response

Entry = ratelimit_pb2.RateLimitDescriptor.Entry


def _desc(*entries: tuple[str, str], hits: int | None = None,
          limit: tuple[int, int] | None = None) -> ratelimit_pb2.RateLimitDescriptor:
    desc = ratelimit_pb2.RateLimitDescriptor(entries=[Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        desc.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    if limit is not None:
        desc.limit.requests_per_unit, desc.limit.unit = limit
    return desc


REQUESTS = [
    rls_pb2.RateLimitRequest(domain="edge", descriptors=[_desc(("remote_address", "10.0.0.1"))]),
    rls_pb2.RateLimitRequest(domain="", descriptors=[]),
    rls_pb2.RateLimitRequest(domain="édge-ü", hits_addend=4_000_000_000, descriptors=[
        _desc(("k" * 300, "v" * 1000), ("", "")),
        _desc(hits=0),
        _desc(("a", "b"), hits=2**40, limit=(7, 3)),
        _desc(("a", "b"), limit=(7, 0)),  # UNKNOWN unit: no override
        ratelimit_pb2.RateLimitDescriptor(),
    ]),
]


@pytest.mark.parametrize("message", REQUESTS)
def test_decode_matches_generated_classes(message: rls_pb2.RateLimitRequest) -> None:
    """decode_request(bytes) == to_request(parsed message) for varied requests."""
    assert decode_request(message.SerializeToString()) == to_request(message)


def test_decode_skips_unknown_fields() -> None:
    """Unknown fields of every wire type are skipped, as protobuf requires."""
    known = REQUESTS[0].SerializeToString()
    unknown = (b"\xa0\x06\x05"  # field 100 varint
               b"\xa9\x06" + b"\x00" * 8  # field 101 fixed64
               + b"\xb2\x06\x03abc"  # field 102 bytes
               + b"\xbd\x06" + b"\x00" * 4)  # field 103 fixed32
    assert decode_request(unknown + known) == decode_request(known)


@pytest.mark.parametrize("garbage", [b"\x0a\x05ab", b"\x12\x02\x0a\x09", b"\x0a\x02\xff\xfe",
                                     b"\x0b", b"\x80"])
def test_decode_rejects_malformed(garbage: bytes) -> None:
    """Truncated or invalid bytes raise WireError, never another exception."""
    with pytest.raises(WireError):
        decode_request(garbage)


MINUTE = Limit(unit="minute", requests_per_unit=20)
NAMED = Limit(unit="week", requests_per_unit=0, name="per_ip")
BIG = Limit(unit="year", requests_per_unit=4_000_000_000, name="x" * 200)

DECISIONS = [
    Decision(Code.OK, (Status(Code.OK),)),
    Decision(Code.OVER_LIMIT, (
        Status(Code.OK, MINUTE, 19, 42),
        Status(Code.OVER_LIMIT, NAMED, 0, 604_800),
        Status(Code.OK, None, MAX_REMAINING),
        Status(Code.OK, BIG, 3_999_999_999, 1),
        Status(Code.OK, MINUTE, 0, 0),
    ), headers=(("RateLimit-Limit", "20"), ("RateLimit-Reset", "42"))),
]


@pytest.mark.parametrize("decision", DECISIONS)
def test_encode_matches_generated_classes(decision: Decision) -> None:
    """encode_response parses back to exactly what to_response builds."""
    parsed = rls_pb2.RateLimitResponse.FromString(encode_response(decision))
    assert parsed == to_response(decision)


def test_every_truncation_is_rejected_or_agrees() -> None:
    """Every prefix of a valid request either decodes like protobuf does or raises WireError."""
    from google.protobuf.message import DecodeError

    full = REQUESTS[2].SerializeToString()
    for cut in range(len(full)):
        data = full[:cut]
        try:
            expected = to_request(rls_pb2.RateLimitRequest.FromString(data))
        except DecodeError:
            with pytest.raises(WireError):
                decode_request(data)
            continue
        assert decode_request(data) == expected
