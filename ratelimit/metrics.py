"""Prometheus metrics of the rate limit service (registry injected, label values bounded).

Names follow what envoyproxy/ratelimit's Prometheus mapping gives its users' dashboards
(``ratelimit_service_rate_limit_<stat>``), with ``_total`` on counters. ``key`` is the descriptor
key path as written in the config (``key1_value1.subkey1``); runtime values appear in it only
with ``detailed_metric``/``value_to_metric``, and the number of distinct (domain, key) label
pairs is capped: past ``max_keys`` new ones are counted under ``key="_overflow_"``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from ratelimit.limiter import Decision

OVERFLOW = "_overflow_"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

_Children = tuple[Counter, Counter, Counter, Counter, Counter, Counter]


class RateLimitMetrics:
    """Every metric the service exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        labels = ["domain", "key"]

        def rule(name: str, doc: str) -> Counter:
            return Counter(f"ratelimit_service_rate_limit_{name}", doc, labels, registry=registry)

        self.total_hits = rule("total_hits", "Hits (sum of hits_addend) per rule.")
        self.over_limit = rule("over_limit", "Hits over the limit per rule.")
        self.near_limit = rule("near_limit", "Hits above the near-limit ratio of a limit.")
        self.within_limit = rule("within_limit", "Hits within the limit per rule.")
        self.shadow_mode = rule("shadow_mode", "Over-limit hits allowed by the rule's shadow_mode.")
        self.over_limit_with_local_cache = rule(
            "over_limit_with_local_cache", "Over-limit hits answered from the local cache."
        )
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
        self.latency = Histogram(
            "ratelimit_service_response_time_seconds",
            "ShouldRateLimit handling time in seconds.", buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str], _Children] = {}
        self._domains: set[str] = set()

    def _rule(self, domain: str, key: str) -> _Children:
        children = self._children.get((domain, key))
        if children is None:
            if len(self._children) >= self.max_keys:
                key = OVERFLOW
                hit = self._children.get((domain, key))
                if hit is not None:
                    return hit
            children = (
                self.total_hits.labels(domain, key),
                self.over_limit.labels(domain, key),
                self.near_limit.labels(domain, key),
                self.within_limit.labels(domain, key),
                self.shadow_mode.labels(domain, key),
                self.over_limit_with_local_cache.labels(domain, key),
            )
            self._children[(domain, key)] = children
        return children

    def record(self, domain: str, decision: Decision) -> None:
        """Count one decision's statistics."""
        if not decision.domain_found:
            if domain not in self._domains and len(self._domains) >= 100:
                domain = OVERFLOW
            else:
                self._domains.add(domain)
            self.domain_not_found.labels(domain).inc()
            return
        if decision.global_shadow:
            self.global_shadow_mode.inc()
        for delta in decision.stats:
            total, over, near, within, shadow, cached = self._rule(delta.domain, delta.key)
            if delta.total_hits:
                total.inc(delta.total_hits)
            if delta.over_limit:
                over.inc(delta.over_limit)
            if delta.near_limit:
                near.inc(delta.near_limit)
            if delta.within_limit:
                within.inc(delta.within_limit)
            if delta.shadow_mode:
                shadow.inc(delta.shadow_mode)
            if delta.over_limit_with_local_cache:
                cached.inc(delta.over_limit_with_local_cache)
