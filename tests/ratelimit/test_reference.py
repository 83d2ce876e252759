"""envoyproxy/ratelimit's own expectations (config_test.go, ratelimit_test.go) replayed as data.

Stat keys, stat counts and the reference's settings (global quota mode, dynamic metadata,
MERGE_DOMAIN_CONFIG, STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT), against the limiter and the
memory backend on a fake clock. Fixtures under ``configs/reference/`` are the reference's own
files (see the README there for source and license).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from envoy_mixer.common.errors import ConfigError
from ratelimit.backends import CounterOp
from ratelimit.config import Limit, RateLimitConfig, load_config, load_texts
from ratelimit.limiter import MAX_REMAINING, Code, Descriptor, Limiter, Request
from ratelimit.metrics import RateLimitMetrics
from tests.ratelimit.recording import RecordingBackend
from tests.ratelimit.recording import recording_limiter as limiter

REFERENCE = Path(__file__).parent / "configs" / "reference"
MakeRequest = Callable[..., Request]


def ops_of(lim: Limiter) -> list[list[CounterOp]]:
    backend = lim.backend
    assert isinstance(backend, RecordingBackend)
    return backend.batches


# ------------------------------------------------------------------------------- stat keys

# (entries, stats key without the domain) from TestShareThreshold in config_test.go.
SHARE_THRESHOLD_KEYS = [
    ((("files", "files/a.txt"),), "files_files/*"),
    ((("files", "files/b/c.txt"),), "files_files/*"),
    ((("route", "api/v1"), ("method", "GET")), "route_api/*.method"),
    ((("route", "api/v2"), ("method", "POST")), "route_api/*.method"),
    ((("service", "svc/user"), ("endpoint", "get")), "service_svc/*.endpoint_get"),
    ((("nested", "parent"), ("files", "nested/file1.txt")), "nested_parent.files_nested/*"),
    ((("files", "top/file1.txt"), ("files", "nested/file1.txt")), "files_top/*.files_nested/*"),
    ((("path", "path/foo"), ("file", "file/doc1"), ("type", "pdf")),
     "path_path/*.file_file/*.type"),
    ((("user", "user/alice"), ("resource", "res/file1"), ("action", "read")),
     "user_user/*.resource_res/*.action"),
    ((("file", "test1"),), "file_test1"),
    ((("file", "testing"),), "file_test*"),
    ((("midpath", "/api/v1"),), "midpath_/api*v1"),
    ((("multiroute", "svcAepBrpc"),), "multiroute_svc*ep*rpc"),
    ((("midroute", "/api/v2"),), "midroute_/api*v2"),
    ((("midroute", "/api-beta-v2"),), "midroute_/api*v2"),
]


@pytest.mark.parametrize(("entries", "key"), SHARE_THRESHOLD_KEYS)
async def test_share_threshold_decides_the_stat_key(
    entries: tuple[tuple[str, str], ...], key: str, make_request: MakeRequest, clock: Any
) -> None:
    """share_threshold gives one series per pattern, even with value_to_metric/detailed_metric."""
    config = load_config(REFERENCE / "share_threshold.yaml")
    decision = await limiter(clock).decide(config, make_request("test-domain", entries))
    assert [s.key for s in decision.stats] == [key]


async def test_share_threshold_values_share_one_counter(
    make_request: MakeRequest, clock: Any
) -> None:
    """Every value matching a share_threshold pattern counts on one counter key."""
    config = load_config(REFERENCE / "share_threshold.yaml")
    lim = limiter(clock)
    for value in ("api/v1", "api/v2"):
        await lim.decide(config, make_request("test-domain", (("route", value), ("method", "GET"))))
    keys = {op.key for batch in ops_of(lim) for op in batch}
    assert keys == {"test-domain_route_api/*_method_GET_999960"}


VALUE_TO_METRIC = """\
domain: domain
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
"""


@pytest.mark.parametrize(("route", "method", "key"), [
    ("", "GET", "route.http_method_GET.subject_id"),
    ("draw", "", "route_draw.http_method.subject_id"),
    ("", "", "route.http_method.subject_id"),
    ("draw", "GET", "route_draw.http_method_GET.subject_id"),
])
async def test_value_to_metric_empty_value_leaves_the_key_alone(
    route: str, method: str, key: str, make_request: MakeRequest, clock: Any
) -> None:
    """value_to_metric with an empty value gives `route`, never `route_` (TestValueToMetric_...)."""
    config = load_texts([("inline.yaml", VALUE_TO_METRIC)])
    entries = (("route", route), ("http_method", method), ("subject_id", "123"))
    decision = await limiter(clock).decide(config, make_request("domain", entries))
    assert decision.stats[0].key == key


async def test_override_stat_key_is_the_key_value_path(load: Any, clock: Any) -> None:
    """A limit override is counted under `key1_value1.subkey1_something`, as the reference."""
    override = Descriptor((("key1", "value1"), ("subkey1", "something")),
                          override=Limit(unit="second", requests_per_unit=42))
    decision = await limiter(clock).decide(load("basic.yaml"), Request("test-domain", (override,)))
    assert decision.stats[0].key == "key1_value1.subkey1_something"


# ------------------------------------------------------------------------------ stat counts


async def test_unlimited_descriptors_are_not_counted(
    load: Any, make_request: MakeRequest, clock: Any
) -> None:
    """An unlimited descriptor adds to no stat: total_hits and within_limit stay at zero."""
    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry)
    lim = limiter(clock)
    decision = await lim.decide(load("basic.yaml"), make_request("test-domain", (("key6", "x"),)))
    metrics.record("test-domain", decision)
    assert decision.statuses[0].remaining == MAX_REMAINING
    for stat in ("total_hits", "within_limit"):
        value = registry.get_sample_value(
            f"ratelimit_service_rate_limit_{stat}_total", {"domain": "test-domain", "key": "key6"})
        assert value in (None, 0.0)
    assert ops_of(lim) == []


# ------------------------------------------------------------------- the reference's settings


QUOTA = """\
domain: q
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 5}
"""


async def test_global_quota_mode_needs_every_descriptor_over(
    make_request: MakeRequest, clock: Any
) -> None:
    """QUOTA_MODE: every descriptor is a quota one; the request fails only when all are over."""
    config = load_texts([("q.yaml", QUOTA)])
    plain = limiter(clock)
    quota = limiter(clock, quota_mode=True)
    both = make_request("q", (("a", "1"),), (("b", "1"),))
    for lim in (plain, quota):
        await lim.decide(config, both)
    assert (await plain.decide(config, both)).overall is Code.OVER_LIMIT
    second = await quota.decide(config, both)
    assert [s.code for s in second.statuses] == [Code.OVER_LIMIT, Code.OK]
    assert second.overall is Code.OK
    only_a = await quota.decide(config, make_request("q", (("a", "1"),)))
    assert only_a.overall is Code.OVER_LIMIT
    # A descriptor without a limit is a quota descriptor that never fails.
    with_free = await quota.decide(config, make_request("q", (("a", "1"),), (("zzz", "1"),)))
    assert with_free.overall is Code.OK


async def test_stop_increment_when_over_limit(make_request: MakeRequest, clock: Any) -> None:
    """STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT: a hit one limit refuses is not counted by others."""
    config = load_texts([("q.yaml", QUOTA)])
    req = make_request("q", (("a", "1"),), (("b", "1"),))
    for stop, b_count in ((False, 3), (True, 1)):
        lim = limiter(clock, stop_increment_when_over_limit=stop)
        decisions = [await lim.decide(config, req) for _ in range(3)]
        assert [d.overall for d in decisions] == [Code.OK, Code.OVER_LIMIT, Code.OVER_LIMIT]
        # b's counter: read without counting, as the reference's GET pass does.
        peek = await lim.backend.apply([CounterOp("q_b_1_999960", 0, 60)])
        assert peek == [b_count]
        assert decisions[-1].statuses[1].remaining == 5 - b_count


async def test_stop_increment_passes_when_nothing_would_exceed(
    make_request: MakeRequest, clock: Any
) -> None:
    """With STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, hits under every limit count as usual."""
    config = load_texts([("q.yaml", QUOTA)])
    lim = limiter(clock, stop_increment_when_over_limit=True)
    decision = await lim.decide(config, make_request("q", (("b", "1"),)))
    assert decision.statuses[0].remaining == 4
    assert decision.stats[0].within_limit == 1


async def test_dynamic_metadata_shape(make_request: MakeRequest, clock: Any) -> None:
    """RESPONSE_DYNAMIC_METADATA: domain, descriptors, hitsAddend, the passed limits' metadata."""
    config = load_config(REFERENCE / "metadata.yaml")
    lim = limiter(clock, response_dynamic_metadata=True)
    req = Request("test-domain", (
        Descriptor((("key1", "value1"), ("subkey1", "x"))),
        Descriptor((("key2", "y"),), hits_addend=3),
    ), hits_addend=2)
    decision = await lim.decide(config, req)
    assert decision.metadata == {
        "domain": "test-domain",
        "descriptors": [
            {"entries": ["key1=value1", "subkey1=x"]},
            {"entries": ["key2=y"], "hitsAddend": 3},
        ],
        "hitsAddend": 2,
        "metadata": {"name": "service_1", "service_with_quota": {"name": "service_2"}},
    }
    assert (await limiter(clock).decide(config, req)).metadata is None


async def test_dynamic_metadata_leaves_out_limits_over(make_request: MakeRequest,
                                                       clock: Any) -> None:
    """Only descriptors that passed contribute their metadata."""
    config = load_config(REFERENCE / "metadata.yaml")
    lim = limiter(clock, response_dynamic_metadata=True)
    req = make_request("test-domain", (("key2", "y"),), hits_addend=21)
    decision = await lim.decide(config, req)
    assert decision.overall is Code.OVER_LIMIT
    assert decision.metadata is not None and "metadata" not in decision.metadata


def test_merge_domain_config() -> None:
    """MERGE_DOMAIN_CONFIG: one domain across files; a top-level key in both is an error."""
    texts = [(p.name, p.read_text()) for p in sorted(REFERENCE.glob("merge_domain_key*.yaml"))]
    with pytest.raises(ConfigError, match="duplicate domain 'test-domain' in config file"):
        load_texts(texts)
    merged: RateLimitConfig = load_texts(texts, merge_domains=True)
    assert merged.descriptor_paths("test-domain") == [
        (("key1", "value1"),), (("key2", "value2"),)
    ]
    twice = [texts[0], texts[0]]
    with pytest.raises(ConfigError) as info:
        load_texts(twice, merge_domains=True)
    assert str(info.value).startswith(
        "merge_domain_key1.yaml: duplicate descriptor composite key 'test-domain.key1_value1'")


def test_dynamic_metadata_on_the_wire() -> None:
    """The hand-written encoder's dynamic_metadata parses as the same Struct (field 6)."""
    from envoy.service.ratelimit.v3 import rls_pb2
    from google.protobuf import json_format

    from ratelimit.limiter import Decision, Status
    from ratelimit.wire import encode_response

    data = {"domain": "d", "descriptors": [{"entries": ["k=v"], "hitsAddend": 3}],
            "metadata": {"flag": True, "none": None, "list": [1.5, "x", {"n": {}}]}}
    raw = encode_response(Decision(Code.OK, (Status(Code.OK),), metadata=data))
    parsed = rls_pb2.RateLimitResponse.FromString(raw)
    assert json_format.MessageToDict(parsed.dynamic_metadata) == data
    assert parsed.overall_code == Code.OK and len(parsed.statuses) == 1


async def test_domain_not_found_counts_each_descriptor(make_request: MakeRequest,
                                                       load: Any, clock: Any) -> None:
    """An unknown domain counts domain_not_found once per descriptor, as each lookup misses."""
    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry)
    decision = await limiter(clock).decide(
        load("basic.yaml"), make_request("foo_domain", (("a", "1"),), (("b", "2"),)))
    metrics.record("foo_domain", decision)
    assert registry.get_sample_value("ratelimit_service_rate_limit_domain_not_found_total",
                                     {"domain": "foo_domain"}) == 2


STOP_INCREMENT = """\
domain: domain
descriptors:
  - key: key4
    rate_limit: {unit: hour, requests_per_unit: 15}
  - key: key5
    rate_limit: {unit: hour, requests_per_unit: 14}
"""


async def test_stop_increment_replays_the_references_sequence(clock: Any) -> None:
    """TestOverLimitWithStopCacheKeyIncrementWhenOverlimitConfig: statuses, counters and stats."""
    config = load_texts([("d.yaml", STOP_INCREMENT)])
    lim = limiter(clock, stop_increment_when_over_limit=True)
    keys = ["domain_key4_value4_997200", "domain_key5_value5_997200"]
    await lim.backend.apply([CounterOp(k, 10, 3600) for k in keys])  # both start at 10
    registry = CollectorRegistry()
    metrics = RateLimitMetrics(registry)

    def req(hits: int) -> Request:
        return Request("domain", (Descriptor((("key4", "value4"),), hits_addend=hits),
                                  Descriptor((("key5", "value5"),), hits_addend=hits)))

    answers = []
    for hits in (1, 2, 2):
        decision = await lim.decide(config, req(hits))
        metrics.record("domain", decision)
        answers.append([(s.code, s.remaining) for s in decision.statuses])
    assert answers == [
        [(Code.OK, 4), (Code.OK, 3)],
        [(Code.OK, 2), (Code.OK, 1)],
        [(Code.OK, 2), (Code.OVER_LIMIT, 0)],  # key5 would pass its limit: key4 not counted
    ]
    assert await lim.backend.apply([CounterOp(k, 0, 3600) for k in keys]) == [13, 15]

    def stat(name: str, key: str) -> float | None:
        return registry.get_sample_value(f"ratelimit_service_rate_limit_{name}_total",
                                         {"domain": "domain", "key": key})

    expected = {"key4": {"total_hits": 5, "over_limit": 0, "near_limit": 2, "within_limit": 5},
                "key5": {"total_hits": 5, "over_limit": 1, "near_limit": 3, "within_limit": 3}}
    for key, values in expected.items():
        assert {name: stat(name, key) for name in values} == values


OVERLAP = """\
domain: quota-domain
descriptors:
  - key: regular
    rate_limit: {unit: minute, requests_per_unit: 10}
    metadata: {name: service_1}
  - key: quota
    rate_limit: {unit: minute, requests_per_unit: 1}
    metadata: {name: service_2, other: x}
"""


async def test_quota_mode_metadata_of_passed_descriptors(make_request: MakeRequest,
                                                         clock: Any) -> None:
    """TestMetadataReturnedForPassedDescriptors / TestOverlapping...: the first value wins."""
    config = load_texts([("q.yaml", OVERLAP)])
    lim = limiter(clock, quota_mode=True, response_dynamic_metadata=True)
    req = make_request("quota-domain", (("regular", "limit"),), (("quota", "limit"),))
    both = await lim.decide(config, req)
    assert both.metadata is not None
    assert both.metadata["metadata"] == {"name": "service_1", "other": "x"}
    one = await lim.decide(config, req)  # quota now over: OK overall, only regular's metadata
    assert one.overall is Code.OK and one.metadata is not None
    assert one.metadata["metadata"] == {"name": "service_1"}


HEADERS = """\
domain: h
descriptors:
  - key: hour
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: tiny
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: minute
    rate_limit: {unit: minute, requests_per_unit: 10}
"""


async def test_response_headers_pick_as_the_reference(make_request: MakeRequest,
                                                      clock: Any) -> None:
    """Headers: the fewest remaining, but the last descriptor over its limit always wins."""
    config = load_texts([("h.yaml", HEADERS)])
    lim = limiter(clock, response_headers=True, limit_header="A-Ratelimit-Limit",
                  remaining_header="A-Ratelimit-Remaining", reset_header="A-Ratelimit-Reset")
    clock.now = 1_000_002  # 42 s into its minute (999,960)
    fewest = await lim.decide(config, make_request("h", (("minute", "m"),), (("hour", "x"),)))
    assert dict(fewest.headers) == {"A-Ratelimit-Limit": "1", "A-Ratelimit-Remaining": "0",
                                    "A-Ratelimit-Reset": str(3600 - 1_000_002 % 3600)}
    await lim.decide(config, make_request("h", (("tiny", "t"),)))
    # Both over: the later one's limit and reset, not the one blocking longest.
    over = await lim.decide(config, make_request("h", (("hour", "x"),), (("tiny", "t"),),
                                                 (("minute", "m"),)))
    assert over.overall is Code.OVER_LIMIT
    assert dict(over.headers) == {"A-Ratelimit-Limit": "1", "A-Ratelimit-Remaining": "0",
                                  "A-Ratelimit-Reset": "18"}
