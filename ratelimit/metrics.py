"""Prometheus metrics of the rate limit service (registry injected, label values bounded).

Names follow what envoyproxy/ratelimit's Prometheus mapping gives its users' dashboards
(``ratelimit_service_rate_limit_<stat>``), with ``_total`` on counters. ``key`` is the descriptor
key path as written in the config (``key1_value1.subkey1``); runtime values appear in it only
with ``detailed_metric``/``value_to_metric``, and the number of distinct (domain, key) label
pairs is capped: past ``max_keys`` new ones are counted under ``key="_overflow_"``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from envoy_mixer.runtime.metrics import OVERFLOW, Counter, CounterGroup, Histogram
from ratelimit.limiter import Decision

__all__ = ["OVERFLOW", "RULE_COUNTERS", "RateLimitMetrics"]

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

#: Distinct unknown domains counted by name before they share ``domain="_overflow_"``.
MAX_UNKNOWN_DOMAINS = 100


def _key_overflow(values: tuple[str, ...]) -> tuple[str, ...]:
    # Past the cap the domain stays (domains come from the config, so they are bounded).
    return (values[0], OVERFLOW)


class RateLimitMetrics:
    """Every metric the service exports, registered on one registry.

    All of them are ``envoy_mixer.runtime.metrics`` counters: a decision adds to a few list
    items instead of taking a lock per counter.
    """

    def __init__(self, registry: CollectorRegistry, max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        self.rules = CounterGroup(
            [(f"ratelimit_service_rate_limit_{name}", doc) for name, doc in RULE_COUNTERS],
            ["domain", "key"], max_series=max_keys, overflow=_key_overflow, registry=registry,
        )
        self.domain_not_found = Counter(
            "ratelimit_service_rate_limit_domain_not_found",
            "Requests for a domain no config file defines.", ["domain"],
            max_series=MAX_UNKNOWN_DOMAINS, registry=registry,
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
        self.latency = Histogram(
            "ratelimit_service_response_time_seconds", "ShouldRateLimit handling time in seconds.",
            _LATENCY_BUCKETS, registry=registry,
        )
        # Hot-path handles, looked up once.
        self._rule_series = self.rules.series
        self._rule_slot = self.rules.slot
        self._shadow = self.global_shadow_mode.labels()

    def record(self, domain: str, decision: Decision) -> None:
        """Count one decision's statistics."""
        if not decision.domain_found:
            # Once per descriptor, as the reference counts it (each lookup misses the domain).
            self.domain_not_found.labels(domain).inc(len(decision.statuses))
            return
        if decision.global_shadow:
            self._shadow.inc()
        series = self._rule_series
        for rule_domain, key, total, over, near, within, shadow, cached in decision.stats:
            slot = series.get((rule_domain, key))
            if slot is None:
                slot = self._rule_slot(rule_domain, key)
            slot[0] += total
            slot[1] += over
            slot[2] += near
            slot[3] += within
            slot[4] += shadow
            slot[5] += cached
