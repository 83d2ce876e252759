"""The scrape-time decision counters and latency histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from extauthz.metrics import ERROR_REASONS, LATENCY_BUCKETS, RESULTS, AuthzMetrics


def _lines(registry: CollectorRegistry, name: str) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines()
            if name in line and "_created" not in line]


def test_histogram_text_equals_prometheus_client() -> None:
    """The latency histogram exports exactly what a prometheus_client Histogram would."""
    reference = CollectorRegistry()
    histogram = Histogram("mixer_authz_check_duration_seconds", "Time spent in Check, in seconds.",
                          buckets=LATENCY_BUCKETS, registry=reference)
    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    for value in (0.0, 0.00005, 0.00007, 0.001, 0.3, 2.0):
        histogram.observe(value)
        metrics.observe(value)
    name = "mixer_authz_check_duration_seconds"
    assert _lines(registry, name) == _lines(reference, name)


def test_counters_start_at_zero_and_count() -> None:
    """Every result is exported at 0 before any Check; policy pairs appear when counted."""
    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    for result in RESULTS:
        assert registry.get_sample_value("mixer_authz_decisions_total", {"result": result}) == 0
    for reason in ERROR_REASONS:
        assert registry.get_sample_value("mixer_authz_errors_total", {"reason": reason}) == 0
    assert registry.get_sample_value("mixer_authz_output_headers_dropped_total") == 0
    metrics.count("deny")
    metrics.count_policy("foo/bar", "deny")
    metrics.count_policy("foo/bar", "deny")
    assert registry.get_sample_value("mixer_authz_decisions_total", {"result": "deny"}) == 1
    assert registry.get_sample_value("mixer_authz_policy_decisions_total",
                                     {"policy": "foo/bar", "result": "deny"}) == 2


def test_an_error_counts_its_reason_and_an_error_decision() -> None:
    """count_error bumps errors_total{reason} and decisions_total{result="error"} together."""
    registry = CollectorRegistry()
    metrics = AuthzMetrics(registry)
    metrics.count_error("internal")
    assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "internal"}) == 1
    assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "no_policy"}) == 0
    assert registry.get_sample_value("mixer_authz_decisions_total", {"result": "error"}) == 1
