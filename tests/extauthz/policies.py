"""Policy text for the pure-engine tests: one AuthorizationPolicy from a rule in YAML flow text."""

from __future__ import annotations

#: The workload most tests decide for (Istio's golden tests use the same one).
NS = {"namespace": "foo", "label.app": "httpbin"}


def allow_policy(rule_yaml: str, name: str = "p", ns: str = "foo", action: str = "ALLOW",
                 extra_meta: str = "") -> str:
    """One policy document with a single rule given as YAML flow text."""
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}{extra_meta}}}
spec:
  action: {action}
  rules: [{rule_yaml}]
"""
