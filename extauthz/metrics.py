"""Prometheus metrics of the policy service (registry injected, labels bounded).

- ``mixer_authz_decisions_total{result}``: one of ``allow``, ``deny``, ``unauthenticated``,
  ``error`` per Check, plus ``dry_run_deny`` and ``audit`` when those happen alongside.
- ``mixer_authz_policy_decisions_total{policy,result}``: the policy that decided (``ns/name``,
  bounded by the loaded config; ``-`` for the default deny when no ALLOW matched).
- ``mixer_authz_check_duration_seconds``: Check latency inside the service.
- ``mixer_authz_jwks_fetches_total{result}``: JWKS fetches by ``success``/``error``.
Reload counts are the shared ``mixer_config_loads_total{service="authz",result}``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

RESULTS = ("allow", "deny", "unauthenticated", "error", "dry_run_deny", "audit")

_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class AuthzMetrics:
    """The service's metrics, bound to one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "mixer_authz_decisions", "Authorization decisions by result.", ["result"],
            registry=registry,
        )
        self.policy_decisions = Counter(
            "mixer_authz_policy_decisions",
            "Decisions attributed to the deciding policy (namespace/name).",
            ["policy", "result"], registry=registry,
        )
        self.check_seconds = Histogram(
            "mixer_authz_check_duration_seconds", "Time spent in Check, in seconds.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.jwks_fetches = Counter(
            "mixer_authz_jwks_fetches", "JWKS fetches by result.", ["result"], registry=registry,
        )
        # Pre-create children so every result shows up at 0 and the hot path skips label lookup.
        self.result = {r: self.decisions.labels(r) for r in RESULTS}

    def jwks_fetched(self, result: str) -> None:
        """Count one JWKS fetch (``success`` or ``error``)."""
        self.jwks_fetches.labels(result).inc()
