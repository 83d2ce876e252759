"""The fast counters and histograms: values as prometheus_client would export them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as ClientCounter
from prometheus_client import Histogram as ClientHistogram

from envoy_mixer.runtime.metrics import OVERFLOW, Counter, CounterGroup, Histogram


def test_counter_values_reach_the_registry() -> None:
    """labels().inc() and inc() show as <name>_total samples, presets as zeros."""
    registry = CollectorRegistry()
    calls = Counter("svc_calls", "Calls.", ["result"], preset=[("ok",), ("error",)],
                    registry=registry)
    total = Counter("svc_all", "All.", registry=registry)
    ok = calls.labels("ok")
    ok.inc()
    ok.inc(2)
    total.inc()
    assert registry.get_sample_value("svc_calls_total", {"result": "ok"}) == 3
    assert registry.get_sample_value("svc_calls_total", {"result": "error"}) == 0
    assert registry.get_sample_value("svc_all_total") == 1
    assert (ok.value, calls.value("ok"), calls.value("never")) == (3, 3, 0)


def test_output_matches_prometheus_client_line_for_line() -> None:
    """Apart from _created values and histogram _created, the text is prometheus_client's."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    buckets = (0.001, 0.5, 1.0)
    Counter("c", "C.", ["x"], registry=ours).labels("a").inc(2)
    ClientCounter("c", "C.", ["x"], registry=theirs).labels("a").inc(2)
    h = Histogram("h", "H.", buckets, ["k"], registry=ours).labels("v")
    hc = ClientHistogram("h", "H.", ["k"], buckets=buckets, registry=theirs).labels("v")
    for value in (0.0005, 0.5, 0.7, 3.0):
        h.observe(value)
        hc.observe(value)

    def lines(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines()
                if "_created" not in line and not line.startswith("# HELP h_created")]

    assert lines(ours) == lines(theirs)


def test_histogram_buckets_are_cumulative_and_bounds_inclusive() -> None:
    """A value equal to a bound counts in that bucket; +Inf, _count and _sum cover all."""
    registry = CollectorRegistry()
    h = Histogram("lat", "Latency.", (0.1, 1.0), registry=registry)
    for value in (0.1, 0.5, 2.0):
        h.observe(value)
    sample = registry.get_sample_value
    assert sample("lat_bucket", {"le": "0.1"}) == 1
    assert sample("lat_bucket", {"le": "1.0"}) == 2
    assert sample("lat_bucket", {"le": "+Inf"}) == 3
    assert sample("lat_count") == 3 and h.count() == 3
    assert sample("lat_sum") == pytest.approx(2.6)


def test_histogram_rejects_unordered_buckets() -> None:
    """Buckets must be finite and strictly ascending."""
    with pytest.raises(ValueError, match="strictly ascending"):
        Histogram("h", "H.", (1.0, 0.5))


def test_counter_group_slots_share_labels() -> None:
    """One slot per label set, counter i in slot[i]; each counter is its own family."""
    registry = CollectorRegistry()
    group = CounterGroup([("hits", "Hits."), ("misses", "Misses.")], ["route"],
                         registry=registry)
    slot = group.slot("a")
    slot[0] += 5
    slot[1] += 1
    assert group.series[("a",)] is slot
    assert group.values("a") == (5, 1) and group.values("b") == (0, 0)
    assert registry.get_sample_value("hits_total", {"route": "a"}) == 5
    assert registry.get_sample_value("misses_total", {"route": "a"}) == 1


def test_max_series_sends_new_label_sets_to_overflow() -> None:
    """Past max_series, new label sets share the overflow series (fixed or computed)."""
    registry = CollectorRegistry()
    fixed = Counter("f", "F.", ["k"], max_series=2, registry=registry)
    for key in ("a", "b", "c", "d"):
        fixed.labels(key).inc()
    assert registry.get_sample_value("f_total", {"k": OVERFLOW}) == 2
    assert registry.get_sample_value("f_total", {"k": "c"}) is None
    per_domain = CounterGroup([("g", "G.")], ["domain", "key"], max_series=1,
                              overflow=lambda v: (v[0], OVERFLOW), registry=registry)
    per_domain.slot("d1", "k1")[0] += 1
    per_domain.slot("d1", "k2")[0] += 1
    per_domain.slot("d2", "k3")[0] += 1
    assert registry.get_sample_value("g_total", {"domain": "d1", "key": OVERFLOW}) == 1
    assert registry.get_sample_value("g_total", {"domain": "d2", "key": OVERFLOW}) == 1


def test_duplicate_names_are_refused_by_the_registry() -> None:
    """Each metric registers itself, so the registry's duplicate check applies."""
    registry = CollectorRegistry()
    Counter("dup", "D.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ClientCounter("dup", "D.", registry=registry)


def test_wrong_number_of_label_values_is_an_error() -> None:
    """labels() needs one value per label name."""
    with pytest.raises(ValueError, match="expected 2 label values"):
        Counter("c", "C.", ["a", "b"]).labels("only-one")
