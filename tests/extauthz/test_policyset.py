"""Policy sets and their per-workload views."""

from __future__ import annotations

from typing import Any

from extauthz.policyset import RecentWorkloads

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules: [{to: [{operation: {paths: ["/ok"]}}]}]
"""


def test_recent_workloads_keep_the_latest_within_their_limit() -> None:
    """The oldest identity is forgotten first; asking again makes one the most recent."""
    recent = RecentWorkloads(limit=2)
    for ns in ("a", "b", "a", "c"):
        recent.add(frozenset({"namespace": ns}.items()), {"namespace": ns})
    assert [dict(ctx)["namespace"] for _, ctx in recent.items()] == ["a", "c"]


def test_warm_builds_the_recent_workloads_views(h: Any) -> None:
    """A new set builds the views of recent workloads up front, and they decide as usual."""
    recent = RecentWorkloads()
    for ns in ("foo", "bar"):
        recent.add(frozenset({"namespace": ns}.items()), {"namespace": ns})
    ps = h.policies(POLICY)
    ps.warm(recent)
    assert ps.cached_views >= 2
    assert h.verdict(ps, "/ok", context_extensions={"namespace": "foo"}) == "allow"
    assert h.verdict(ps, "/no", context_extensions={"namespace": "foo"}) == "deny"
    assert h.verdict(ps, "/no", context_extensions={"namespace": "bar"}) == "allow"


def test_a_reload_comes_with_the_views_already_asked_for(h: Any) -> None:
    """Views used on one set are built when the next set is loaded (off the request path)."""
    ps = h.policies(POLICY)
    h.verdict(ps, "/ok", context_extensions={"namespace": "foo", "label.app": "warm-me"})
    fresh = h.policies(POLICY)
    built = fresh.cached_views
    h.verdict(fresh, "/ok", context_extensions={"namespace": "foo", "label.app": "warm-me"})
    assert fresh.cached_views == built >= 1


def test_a_set_hands_out_its_policies_models(h: Any) -> None:
    """The compiled set exposes the neutral model of each policy, in load order."""
    ps = h.policies(POLICY)
    (model,) = ps.models
    assert (model.key, model.action, [r.name for r in model.rules]) == (
        "foo/p", "ALLOW", ["ns[foo]-policy[p]-rule[0]"])
