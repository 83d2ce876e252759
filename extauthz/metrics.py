"""Prometheus metrics of the policy service (registry injected, labels bounded).

- ``mixer_authz_decisions_total{result}``: one of ``allow``, ``deny``, ``unauthenticated``,
  ``error`` per Check, plus ``dry_run_deny`` and ``audit`` when those happen alongside.
- ``mixer_authz_policy_decisions_total{policy,result}``: the policy that decided (``ns/name``,
  bounded by the loaded config; ``-`` for the default deny when no ALLOW matched).
- ``mixer_authz_errors_total{reason}``: Checks answered with a failed RPC instead of a
  decision, by a stable reason: ``no_policy`` (no good policy load yet: UNAVAILABLE) or
  ``internal`` (a bug or an unexpected failure: INTERNAL). Each also counts as
  ``decisions_total{result="error"}``; Envoy's ``failure_mode_allow`` decides the request.
- ``mixer_authz_output_headers_dropped_total``: JWT output headers left out of an allowed
  request because they would exceed Envoy's header limits (see ``extauthz.output_headers``).
- ``mixer_authz_check_duration_seconds``: Check latency inside the service.
- ``mixer_authz_jwks_fetches_total{result}``: JWKS fetches by ``success``/``error``.
Reload counts are the shared ``mixer_config_loads_total{service="authz",result}``.

All are ``envoy_mixer.runtime.metrics`` collectors: a Check adds to a list slot instead of
taking a lock per counter and per histogram bucket, and the numbers become metric families at
scrape time (Check and the scrape both run on the event-loop thread).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from envoy_mixer.runtime.metrics import Counter, CounterChild, Histogram

RESULTS = ("allow", "deny", "unauthenticated", "error", "dry_run_deny", "audit")

#: ``mixer_authz_errors_total`` reasons (label values are fixed: dashboards can rely on them).
ERROR_REASONS = ("no_policy", "internal")

LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)

#: Bound on ``policy_decisions`` series: policies come from the config, this only guards a
#: config with very many (past it, new pairs are counted under ``_overflow_``).
MAX_POLICY_SERIES = 10_000


class AuthzMetrics:
    """The service's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Every result and reason is present from the start: dashboards see zeros, not gaps.
        decisions = Counter("mixer_authz_decisions", "Authorization decisions by result.",
                            ["result"], preset=[(r,) for r in RESULTS], registry=registry)
        #: Hot-path handles: ``results[verdict].inc()``.
        self.results: dict[str, CounterChild] = {r: decisions.labels(r) for r in RESULTS}
        errors = Counter("mixer_authz_errors", "Checks answered with a failed RPC, by reason.",
                         ["reason"], preset=[(r,) for r in ERROR_REASONS], registry=registry)
        self._errors = {r: errors.labels(r) for r in ERROR_REASONS}
        self._dropped = Counter(
            "mixer_authz_output_headers_dropped",
            "JWT output headers left out because they exceed Envoy's header limits.",
            preset=[()], registry=registry)
        self._policies = Counter(
            "mixer_authz_policy_decisions",
            "Decisions attributed to the deciding policy (namespace/name).",
            ["policy", "result"], max_series=MAX_POLICY_SERIES, registry=registry)
        self._latency = Histogram("mixer_authz_check_duration_seconds",
                                  "Time spent in Check, in seconds.", LATENCY_BUCKETS,
                                  registry=registry)
        #: ``observe(seconds)``: one Check latency (the histogram's own bound method).
        self.observe = self._latency.observe
        self._jwks_fetches = Counter("mixer_authz_jwks_fetches", "JWKS fetches by result.",
                                     ["result"], registry=registry)

    def count(self, result: str) -> None:
        """Count one ``mixer_authz_decisions_total{result}``."""
        self.results[result].inc()

    def count_error(self, reason: str) -> None:
        """Count one failed Check: ``errors_total{reason}`` and ``decisions_total{error}``."""
        self._errors[reason].inc()
        self.results["error"].inc()

    def count_dropped_header(self) -> None:
        """Count one output header left out for its size."""
        self._dropped.inc()

    def count_policy(self, policy: str, result: str) -> None:
        """Count one ``mixer_authz_policy_decisions_total{policy,result}``."""
        self._policies.labels(policy, result).inc()

    def jwks_fetched(self, result: str) -> None:
        """Count one JWKS fetch (``success`` or ``error``)."""
        self._jwks_fetches.labels(result).inc()
