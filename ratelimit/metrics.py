"""Prometheus metrics of the rate limit service (registry injected, label values bounded).

Names follow what envoyproxy/ratelimit's Prometheus mapping gives its users' dashboards
(``ratelimit_service_rate_limit_<stat>``), with ``_total`` on counters. ``key`` is the descriptor
key path as written in the config (``key1_value1.subkey1``); runtime values appear in it only
with ``detailed_metric``/``value_to_metric``, and the number of distinct (domain, key) label
pairs is capped: past ``max_keys`` new ones are counted under ``key="_overflow_"``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ratelimit.limiter import Decision

OVERFLOW = "_overflow_"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

#: Per-rule counters: (name suffix, help), in StatDelta's field order after domain and key.
RULE_COUNTERS = (
    ("total_hits", "Hits (sum of hits_addend) per rule."),
    ("over_limit", "Hits over the limit per rule."),
    ("near_limit", "Hits above the near-limit ratio of a limit."),
    ("within_limit", "Hits within the limit per rule."),
    ("shadow_mode", "Over-limit hits allowed by the rule's shadow_mode."),
    ("over_limit_with_local_cache", "Over-limit hits answered from the local cache."),
)


class _RuleCollector(Collector):
    """Per-rule counters kept as plain integers, turned into metrics at scrape time.

    A decision adds to a few ints instead of taking six counter locks: the hot path is one
    event-loop thread, and scrapes run on the same loop, so no lock is needed.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[int]] = {}

    def collect(self) -> Iterator[Metric]:
        families = [
            CounterMetricFamily(f"ratelimit_service_rate_limit_{name}", doc,
                                labels=["domain", "key"])
            for name, doc in RULE_COUNTERS
        ]
        for (domain, key), values in list(self.values.items()):
            for family, value in zip(families, values, strict=True):
                family.add_metric([domain, key], value)
        yield from families


class _LatencyHistogram(Collector):
    """``ratelimit_service_response_time_seconds``: a histogram kept as plain numbers.

    Same reasoning as the rule counters: one observation per call, on the event-loop thread,
    so a bisect and two additions replace prometheus_client's locked per-bucket loop.
    """

    name = "ratelimit_service_response_time_seconds"

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one call's handling time."""
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, "ShouldRateLimit handling time in seconds.",
                                    buckets=buckets, sum_value=self.total)


class RateLimitMetrics:
    """Every metric the service exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        self._rules = _RuleCollector()
        registry.register(self._rules)
        self.domain_not_found = Counter(
            "ratelimit_service_rate_limit_domain_not_found",
            "Requests for a domain no config file defines.", ["domain"], registry=registry,
        )
        self.global_shadow_mode = Counter(
            "ratelimit_service_global_shadow_mode",
            "Requests over the limit answered OK because of global shadow mode.", registry=registry,
        )
        self.config_load_success = Counter(
            "ratelimit_service_config_load_success", "Successful config loads.", registry=registry
        )
        self.config_load_error = Counter(
            "ratelimit_service_config_load_error",
            "Failed config loads (the previous config stays).", registry=registry,
        )
        self.call_errors = Counter(
            "ratelimit_service_should_rate_limit_error",
            "ShouldRateLimit calls answered with an error, by type "
            "(redis_error, service_error, invalid_argument).",
            ["err_type"], registry=registry,
        )
        self.backend_errors = Counter(
            "ratelimit_backend_errors",
            "Counter backend failures by backend and kind (timeout, connection, response).",
            ["backend", "kind"], registry=registry,
        )
        self.latency = _LatencyHistogram(_LATENCY_BUCKETS)
        registry.register(self.latency)
        self._domains: set[str] = set()

    def rule_values(self, domain: str, key: str) -> list[int]:
        """The per-rule counter values of (domain, key) (for tests and /config)."""
        return list(self._rules.values.get((domain, key), [0] * len(RULE_COUNTERS)))

    def _slot(self, domain: str, key: str) -> list[int]:
        values = self._rules.values
        if len(values) >= self.max_keys:
            key = OVERFLOW
            found = values.get((domain, key))
            if found is not None:
                return found
        slot = [0] * len(RULE_COUNTERS)
        values[(domain, key)] = slot
        return slot

    def record(self, domain: str, decision: Decision) -> None:
        """Count one decision's statistics."""
        if not decision.domain_found:
            if domain not in self._domains and len(self._domains) >= 100:
                domain = OVERFLOW
            else:
                self._domains.add(domain)
            # Once per descriptor, as the reference counts it (each lookup misses the domain).
            self.domain_not_found.labels(domain).inc(len(decision.statuses))
            return
        if decision.global_shadow:
            self.global_shadow_mode.inc()
        values = self._rules.values
        for rule_domain, key, total, over, near, within, shadow, cached in decision.stats:
            slot = values.get((rule_domain, key))
            if slot is None:
                slot = self._slot(rule_domain, key)
            slot[0] += total
            slot[1] += over
            slot[2] += near
            slot[3] += within
            slot[4] += shadow
            slot[5] += cached
