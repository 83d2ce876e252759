"""Prometheus metrics of the policy service (registry injected, labels bounded).

- ``mixer_authz_decisions_total{result}``: one of ``allow``, ``deny``, ``unauthenticated``,
  ``error`` per Check, plus ``dry_run_deny`` and ``audit`` when those happen alongside.
- ``mixer_authz_policy_decisions_total{policy,result}``: the policy that decided (``ns/name``,
  bounded by the loaded config; ``-`` for the default deny when no ALLOW matched).
- ``mixer_authz_check_duration_seconds``: Check latency inside the service.
- ``mixer_authz_errors_total{reason}``: Checks answered with a failed RPC instead of a
  decision, by a stable reason: ``no_policy`` (no good policy load yet: UNAVAILABLE) or
  ``internal`` (a bug or an unexpected failure: INTERNAL). Each also counts as
  ``decisions_total{result="error"}``; Envoy's ``failure_mode_allow`` decides the request.
- ``mixer_authz_output_headers_dropped_total``: JWT output headers left out of an allowed
  request because they would exceed Envoy's header limits (see ``extauthz.output_headers``).
- ``mixer_authz_jwks_fetches_total{result}``: JWKS fetches by ``success``/``error``.
Reload counts are the shared ``mixer_config_loads_total{service="authz",result}``.

The three per-Check metrics are plain Python numbers turned into metric families at scrape
time: a Check then adds to a dict entry instead of taking a lock per counter and per histogram
bucket. Check and the ``/metrics`` scrape both run on the event-loop thread, so no lock is
needed.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

RESULTS = ("allow", "deny", "unauthenticated", "error", "dry_run_deny", "audit")

#: ``mixer_authz_errors_total`` reasons (label values are fixed: dashboards can rely on them).
ERROR_REASONS = ("no_policy", "internal")

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


# Prometheus' bucket label spelling (what prometheus_client's own Histogram writes).
_BUCKET_LABELS = (*(repr(b) for b in LATENCY_BUCKETS), "+Inf")


class _CheckCollector(Collector):
    """Decision counters and the latency histogram, kept as numbers, exported on scrape."""

    def __init__(self) -> None:
        now = time.time()
        #: Every result is present from the start, so dashboards see zeros, not gaps.
        self.results: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.results_created = now
        self.errors: dict[str, int] = dict.fromkeys(ERROR_REASONS, 0)
        self.dropped_headers = 0
        self.policies: dict[tuple[str, str], int] = {}
        self.policies_created: dict[tuple[str, str], float] = {}
        #: ``buckets[i]`` counts observations in (LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]];
        #: the last slot is +Inf.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def collect(self) -> Iterator[Metric]:
        results = CounterMetricFamily("mixer_authz_decisions", "Authorization decisions by result.",
                                      labels=["result"])
        for result, value in list(self.results.items()):
            results.add_metric([result], value, created=self.results_created)
        yield results
        errors = CounterMetricFamily(
            "mixer_authz_errors", "Checks answered with a failed RPC, by reason.",
            labels=["reason"])
        for reason, value in list(self.errors.items()):
            errors.add_metric([reason], value, created=self.results_created)
        yield errors
        yield CounterMetricFamily(
            "mixer_authz_output_headers_dropped",
            "JWT output headers left out because they exceed Envoy's header limits.",
            value=self.dropped_headers, created=self.results_created)
        policies = CounterMetricFamily(
            "mixer_authz_policy_decisions",
            "Decisions attributed to the deciding policy (namespace/name).",
            labels=["policy", "result"])
        for key, value in list(self.policies.items()):
            policies.add_metric(list(key), value, created=self.policies_created.get(key))
        yield policies
        cumulative, total = [], 0
        for label, count in zip(_BUCKET_LABELS, self.buckets, strict=True):
            total += count
            cumulative.append((label, total))
        latency = HistogramMetricFamily("mixer_authz_check_duration_seconds",
                                        "Time spent in Check, in seconds.")
        latency.add_metric([], cumulative, self.latency_sum)
        yield latency


class AuthzMetrics:
    """The service's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._check = _CheckCollector()
        registry.register(self._check)
        #: Hot-path handles: ``results[verdict] += 1`` and friends (see ``record_policy``).
        self.results = self._check.results
        self.jwks_fetches = Counter(
            "mixer_authz_jwks_fetches", "JWKS fetches by result.", ["result"], registry=registry,
        )

    def count(self, result: str) -> None:
        """Count one ``mixer_authz_decisions_total{result}``."""
        self.results[result] += 1

    def count_error(self, reason: str) -> None:
        """Count one failed Check: ``errors_total{reason}`` and ``decisions_total{error}``."""
        self._check.errors[reason] += 1
        self.results["error"] += 1

    def count_dropped_header(self) -> None:
        """Count one output header left out for its size."""
        self._check.dropped_headers += 1

    def count_policy(self, policy: str, result: str) -> None:
        """Count one ``mixer_authz_policy_decisions_total{policy,result}``."""
        key = (policy, result)
        policies = self._check.policies
        if key in policies:
            policies[key] += 1
        else:
            policies[key] = 1
            self._check.policies_created[key] = time.time()

    def observe(self, seconds: float) -> None:
        """Record one Check latency."""
        check = self._check
        # bisect_left: an observation equal to a bound belongs to that bound's bucket (le).
        check.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        check.latency_sum += seconds

    def jwks_fetched(self, result: str) -> None:
        """Count one JWKS fetch (``success`` or ``error``)."""
        self.jwks_fetches.labels(result).inc()
