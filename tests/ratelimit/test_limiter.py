"""Limiter decisions with the memory backend and an injected clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ratelimit.config import Limit, RateLimitConfig
from ratelimit.errors import InvalidRequestError
from ratelimit.limiter import (
    MAX_REMAINING,
    Code,
    Descriptor,
    Request,
)
from tests.ratelimit.recording import RecordingBackend
from tests.ratelimit.recording import recording_limiter as make_limiter

Load = Callable[[str], RateLimitConfig]
MakeRequest = Callable[..., Request]


async def test_fixed_window_counts_and_resets_at_epoch_boundary(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """20/minute: remaining counts down, the 21st is over, a new minute starts afresh."""
    config = load("basic.yaml")
    limiter = make_limiter(clock)
    clock.now = 1_000_000 + 20  # 1,000,000 is 40 s into its minute (999,960)
    req = make_request("test-domain", (("key2", "x"),))
    for i in range(20):
        decision = await limiter.decide(config, req)
        assert decision.overall is Code.OK
        status = decision.statuses[0]
        assert status.remaining == 20 - (i + 1)
        assert status.limit is not None and status.limit.requests_per_unit == 20
        assert status.reset_seconds == 60 - (1_000_020 % 60)
    over = await limiter.decide(config, req)
    assert over.overall is Code.OVER_LIMIT and over.statuses[0].remaining == 0
    clock.now = 1_000_020 - (1_000_020 % 60) + 60  # next window
    fresh = await limiter.decide(config, req)
    assert fresh.overall is Code.OK and fresh.statuses[0].remaining == 19


async def test_keys_are_epoch_aligned(make_request: MakeRequest, load: Load, clock: Any) -> None:
    """Counter keys are <domain>_<key>_<value>_..._<window start> like the reference's."""
    limiter = make_limiter(clock)
    await limiter.decide(load("basic.yaml"), make_request(
        "test-domain", (("key1", "value1"), ("subkey1", "s")), (("key3", "h"),)
    ))
    backend = limiter.backend
    assert isinstance(backend, RecordingBackend)
    assert [op.key for op in backend.batches[0]] == [
        "test-domain_key1_value1_subkey1_s_1000000",
        "test-domain_key3_h_997200",
    ]
    assert [op.ttl for op in backend.batches[0]] == [1, 3600]


async def test_one_backend_call_per_request(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """All descriptors of a request go to the backend in a single batch."""
    limiter = make_limiter(clock)
    await limiter.decide(load("basic.yaml"), make_request(
        "test-domain", (("key2", "a"),), (("key3", "b"),), (("key4", "c"),), (("nope", "x"),)
    ))
    backend = limiter.backend
    assert isinstance(backend, RecordingBackend)
    assert len(backend.batches) == 1 and len(backend.batches[0]) == 3


async def test_statuses_in_request_order(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """Statuses follow request order; any over-limit descriptor makes the whole answer OVER."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    req = make_request("test-domain", (("key2", "a"),), (("key1", "zzz"),), (("key3", "b"),))
    first = await limiter.decide(config, req)
    assert first.overall is Code.OK
    assert [s.code for s in first.statuses] == [Code.OK, Code.OK, Code.OK]
    assert first.statuses[1].limit is None and first.statuses[1].remaining == 0
    second = await limiter.decide(config, req)
    assert second.overall is Code.OVER_LIMIT
    assert [s.code for s in second.statuses] == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert second.statuses[0].remaining == 18


async def test_unknown_domain_and_no_match(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """Unknown domain, unmatched, too-deep and whitelisted descriptors all answer OK, no limit."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    unknown = await limiter.decide(config, make_request("foo", (("hello", "world"),)))
    assert unknown.overall is Code.OK and not unknown.domain_found
    assert unknown.statuses[0].limit is None
    for entries in [(("key2", "value3"),), (("key2", "value2"), ("sub", "x")), ()]:
        decision = await limiter.decide(config, make_request("test-domain", entries))
        assert decision.overall is Code.OK and decision.statuses[0].limit is None
        assert decision.stats == ()


async def test_request_hits_addend_zero_counts_as_one(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """Request-level hits_addend 0 counts 1; 5 counts 5."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    d = await limiter.decide(config, make_request("test-domain", (("key2", "a"),), hits_addend=0))
    assert d.statuses[0].remaining == 19
    d = await limiter.decide(config, make_request("test-domain", (("key2", "a"),), hits_addend=5))
    assert d.statuses[0].remaining == 14 and d.stats[0].total_hits == 5


async def test_descriptor_hits_addend_zero_only_checks(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """Per-descriptor hits_addend wins over the request's; 0 reads without counting."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    check = Descriptor((("key2", "a"),), hits_addend=0)
    three = Descriptor((("key2", "a"),), hits_addend=3)
    d = await limiter.decide(config, make_request("test-domain", check, hits_addend=7))
    assert d.statuses[0].remaining == 20
    d = await limiter.decide(config, make_request("test-domain", three, hits_addend=7))
    assert d.statuses[0].remaining == 17
    d = await limiter.decide(config, make_request("test-domain", check))
    assert d.statuses[0].remaining == 17


async def test_zero_limit_blocks(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """requests_per_unit 0 blocks every request."""
    limiter = make_limiter(clock)
    d = await limiter.decide(load("features.yaml"), make_request("feat", (("block", "x"),)))
    assert d.overall is Code.OVER_LIMIT


async def test_unlimited(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """Unlimited answers OK with remaining uint32 max, no backend call, and counts no stats."""
    limiter = make_limiter(clock)
    d = await limiter.decide(load("basic.yaml"), make_request("test-domain", (("key6", "x"),)))
    assert d.overall is Code.OK and d.statuses[0].remaining == MAX_REMAINING
    assert d.statuses[0].limit is None
    assert d.stats == ()
    backend = limiter.backend
    assert isinstance(backend, RecordingBackend) and backend.batches == []


async def test_near_limit_accounting(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """15/hour, ratio 0.8 (threshold 12): hits 11 none near, 13 one near, 16 one over."""
    limiter = make_limiter(clock)
    config = load("features.yaml")

    def at(n: int) -> Request:
        return make_request("feat", Descriptor((("near", "x"),), hits_addend=n))

    d = await limiter.decide(config, at(11))
    assert (d.statuses[0].remaining, d.stats[0].near_limit, d.stats[0].within_limit) == (4, 0, 11)
    d = await limiter.decide(config, at(2))
    assert (d.statuses[0].remaining, d.stats[0].near_limit) == (2, 1)
    d = await limiter.decide(config, at(3))
    assert d.overall is Code.OVER_LIMIT
    assert (d.stats[0].over_limit, d.stats[0].near_limit, d.stats[0].within_limit) == (1, 2, 0)
    d = await limiter.decide(config, at(4))
    assert (d.stats[0].over_limit, d.stats[0].near_limit) == (4, 0)


async def test_rule_shadow_mode(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """A shadow_mode rule answers OK when over, and counts shadow_mode hits."""
    limiter = make_limiter(clock)
    config = load("features.yaml")
    req = make_request("feat", (("shadow", "x"),))
    await limiter.decide(config, req)
    d = await limiter.decide(config, req)
    assert d.overall is Code.OK and d.statuses[0].code is Code.OK
    assert d.stats[0].shadow_mode == 1 and d.stats[0].over_limit == 1


async def test_global_shadow_mode(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """Global shadow mode answers OK overall while statuses still say OVER_LIMIT."""
    limiter = make_limiter(clock, shadow_mode=True)
    d = await limiter.decide(load("features.yaml"), make_request("feat", (("block", "x"),)))
    assert d.overall is Code.OK and d.global_shadow
    assert d.statuses[0].code is Code.OVER_LIMIT


async def test_replaces(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """A limit named in another matched limit's ``replaces`` is neither applied nor counted."""
    limiter = make_limiter(clock)
    config = load("features.yaml")
    both = make_request("feat", (("general", "x"),), (("special", "y"),))
    for _ in range(4):
        d = await limiter.decide(config, both)
        assert d.overall is Code.OK
        assert d.statuses[0].limit is None
    alone = make_request("feat", (("general", "x"),))
    d = await limiter.decide(config, alone)
    assert d.statuses[0].remaining == 1  # the general counter was never touched


async def test_nested_zero_limit(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """A nested 0/minute rule blocks its own path while the parent's limit stays separate."""
    limiter = make_limiter(clock)
    config = load("features.yaml")
    banned = await limiter.decide(config, make_request("feat", (("foo", "a"), ("bar", "banned"))))
    assert banned.overall is Code.OVER_LIMIT
    assert banned.statuses[0].limit is not None
    assert banned.statuses[0].limit.name == "banned_limit"
    parent = await limiter.decide(config, make_request("feat", (("foo", "a"),)))
    assert parent.overall is Code.OK and parent.statuses[0].remaining == 1


async def test_quota_mode(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """Quota descriptors fail the request only when all of them are over."""
    limiter = make_limiter(clock)
    config = load("features.yaml")
    await limiter.decide(config, make_request("feat", (("quota1", "a"),)))
    one_over = await limiter.decide(config, make_request("feat", (("quota1", "a"),),
                                                         (("quota2", "b"),)))
    assert one_over.overall is Code.OK
    assert one_over.statuses[0].code is Code.OVER_LIMIT
    all_over = await limiter.decide(config, make_request("feat", (("quota1", "a"),),
                                                         (("quota2", "b"),)))
    assert all_over.overall is Code.OVER_LIMIT


async def test_local_cache_skips_backend(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """Once a key is over for this window, later hits are answered without the backend."""
    limiter = make_limiter(clock, local_cache=True)
    config = load("basic.yaml")
    req = make_request("test-domain", (("key3", "x"),))
    await limiter.decide(config, req)
    await limiter.decide(config, req)  # over: cached
    backend = limiter.backend
    assert isinstance(backend, RecordingBackend)
    calls = len(backend.batches)
    d = await limiter.decide(config, req)
    assert d.overall is Code.OVER_LIMIT and len(backend.batches) == calls
    assert d.stats[0].over_limit_with_local_cache == 1 and d.stats[0].over_limit == 1
    clock.now = 997_200 + 3600  # next hour: cache entry no longer applies
    d = await limiter.decide(config, req)
    assert d.overall is Code.OK and len(backend.batches) == calls + 1


async def test_local_cache_off(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """The local cache is off by default (as the reference's): every hit reaches the backend."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    req = make_request("test-domain", (("key3", "x"),))
    for _ in range(3):
        await limiter.decide(config, req)
    backend = limiter.backend
    assert isinstance(backend, RecordingBackend) and len(backend.batches) == 3


async def test_several_limits_on_one_key(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """2/second and 3/minute on one key: both must pass; the tighter status is reported."""
    limiter = make_limiter(clock)
    config = load("extensions.yaml")
    req = make_request("ext", (("api_key", "k"),))
    codes = []
    for second in range(3):
        clock.now = 999_960 + second  # three seconds of one minute
        for _ in range(2):
            codes.append((await limiter.decide(config, req)).overall)
    assert codes == [Code.OK, Code.OK, Code.OK, Code.OVER_LIMIT, Code.OVER_LIMIT,
                     Code.OVER_LIMIT]
    d = await limiter.decide(config, req)
    assert d.statuses[0].limit is not None and d.statuses[0].limit.unit == "minute"


async def test_sliding_window(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """10/minute sliding: the previous minute's hits weigh in proportionally to its overlap."""
    limiter = make_limiter(clock)
    config = load("extensions.yaml")
    req = make_request("ext", (("sliding", "x"),))
    clock.now = 999_960 + 50
    for _ in range(10):
        assert (await limiter.decide(config, req)).overall is Code.OK
    rejected = await limiter.decide(config, req)
    assert rejected.overall is Code.OVER_LIMIT
    # 15 s into the next minute: 75% of the previous window still counts (7 of 10).
    clock.now = 1_000_020 + 15
    results = [(await limiter.decide(config, req)).overall for _ in range(4)]
    assert results == [Code.OK, Code.OK, Code.OK, Code.OVER_LIMIT]
    # A fixed window would have admitted 10 right after the boundary.
    clock.now = 1_000_020 + 59
    assert (await limiter.decide(config, req)).overall is Code.OK


async def test_override_limit(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """Envoy's per-descriptor limit override replaces the configured limit."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    override = Descriptor((("key2", "a"),), override=Limit(unit="minute", requests_per_unit=1))
    d = await limiter.decide(config, make_request("test-domain", override))
    assert d.statuses[0].limit is not None and d.statuses[0].limit.requests_per_unit == 1
    assert d.stats[0].key == "key2_a"  # the reference's key_value path
    d = await limiter.decide(config, make_request("test-domain", override))
    assert d.overall is Code.OVER_LIMIT


async def test_response_headers(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """RateLimit-* headers come from the tightest descriptor; an over-limit one wins."""
    limiter = make_limiter(clock, response_headers=True)
    config = load("basic.yaml")
    clock.now = 1_000_000 + 2
    d = await limiter.decide(config, make_request("test-domain", (("key2", "a"),),
                                                  (("key2", "value2"),)))
    assert dict(d.headers) == {
        "RateLimit-Limit": "20", "RateLimit-Remaining": "19", "RateLimit-Reset": "18",
    }
    await limiter.decide(config, make_request("test-domain", (("key3", "a"),)))
    d = await limiter.decide(config, make_request("test-domain", (("key2", "a"),),
                                                  (("key3", "a"),)))
    assert dict(d.headers)["RateLimit-Limit"] == "1"
    assert dict(d.headers)["RateLimit-Remaining"] == "0"


async def test_detailed_metric_key(load: Load, make_request: MakeRequest, clock: Any) -> None:
    """detailed_metric puts the runtime value into the stats key; others keep the config's."""
    limiter = make_limiter(clock)
    config = load("basic.yaml")
    d = await limiter.decide(config, make_request("test-domain", (("key7", "v1"),),
                                                  (("key2", "v2"),)))
    assert [s.key for s in d.stats] == ["key7_v1", "key2"]


async def test_share_threshold_shares_one_counter(
    load: Load, make_request: MakeRequest, clock: Any
) -> None:
    """share_threshold counts every value matching the wildcard on one counter."""
    limiter = make_limiter(clock)
    config = load("wildcard.yaml")
    await limiter.decide(config, make_request("wild-domain", (("shared", "files/a"),)))
    await limiter.decide(config, make_request("wild-domain", (("shared", "files/b"),)))
    d = await limiter.decide(config, make_request("wild-domain", (("shared", "files/c"),)))
    assert d.overall is Code.OVER_LIMIT


@pytest.mark.parametrize(("req", "message"), [
    (Request("", (Descriptor((("a", "b"),)),)), "rate limit domain must not be empty"),
    (Request("d", ()), "rate limit descriptor list must not be empty"),
])
async def test_invalid_requests(
    load: Load, clock: Any, req: Request, message: str
) -> None:
    """Empty domain or descriptor list raises InvalidRequestError with a clear message."""
    with pytest.raises(InvalidRequestError, match=message):
        await make_limiter(clock).decide(load("basic.yaml"), req)
