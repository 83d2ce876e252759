"""The compiled policy set of one load, and the per-workload views requests are decided on.

``PolicySet`` holds every compiled policy and RequestAuthentication in load order. A workload
(the namespace and labels its Envoy names in ``context_extensions``) gets a ``WorkloadView``:
only the policies in its scope, their rules split by action and dry-run into ``RuleIndex``es,
and the JWT rules that apply. Views are built on first use per identity and kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.compile import Policy
from extauthz.index import RuleIndex
from extauthz.jwt import JwtRule
from extauthz.model import Authentication, PolicyModel
from extauthz.request import Workload
from extauthz.trustdomain import TrustDomains


@dataclass(frozen=True, slots=True, eq=False)
class WorkloadView:
    """The policies that apply to one workload, ready for evaluation."""

    workload: Workload
    policies: tuple[Policy, ...]
    deny: RuleIndex
    allow: RuleIndex
    audit: RuleIndex
    has_allow: bool
    dry_deny: RuleIndex
    dry_allow: RuleIndex
    has_dry_allow: bool
    has_dry_run: bool
    jwt_rules: tuple[JwtRule, ...]
    #: Keys of the enforced ALLOW policies, named by default-deny logs (built once, not per deny).
    allow_policy_keys: tuple[str, ...] = ()


class RecentWorkloads:
    """The workload identities views were last built for, most recent last (bounded)."""

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._items: dict[Any, Mapping[str, str]] = {}

    def add(self, key: Any, context_extensions: Mapping[str, str]) -> None:
        """Remember ``key`` (the oldest is forgotten beyond ``limit``)."""
        items = self._items
        items.pop(key, None)
        items[key] = dict(context_extensions)
        if len(items) > self.limit:
            del items[next(iter(items))]

    def items(self) -> list[tuple[Any, Mapping[str, str]]]:
        """A copy of the remembered identities (safe against concurrent ``add``)."""
        return list(self._items.items())


#: Shared by every set of the process: the service's reloads warm the views its traffic uses.
RECENT_WORKLOADS = RecentWorkloads()


class PolicySet:
    """All loaded policies; ``view(context_extensions)`` gives a workload's compiled view."""

    #: Views kept per distinct workload identity; identities come from Envoy configs, so this
    #: is a safety bound, not a working-set limit.
    MAX_VIEWS = 4096

    def __init__(
        self,
        policies: Sequence[Policy],
        authentications: Sequence[Authentication] = (),
        *,
        root_namespace: str = "istio-system",
        default_namespace: str = "default",
        files: Sequence[str] = (),
        trust_domains: TrustDomains | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self.trust_domains = trust_domains or TrustDomains()
        self.authentications = tuple(authentications)
        self.root_namespace = root_namespace
        self.default_namespace = default_namespace
        self.files = tuple(files)
        self._views: dict[Any, WorkloadView] = {}

    @property
    def models(self) -> tuple[PolicyModel, ...]:
        """The neutral model of every policy, in load order (what an RBAC generator reads)."""
        return tuple(p.model for p in self.policies)

    @property
    def cached_views(self) -> int:
        """How many workload views are built and kept."""
        return len(self._views)

    def policy(self, index: int) -> Policy:
        """The policy at load position ``index``."""
        return self.policies[index]

    def view(self, context_extensions: Mapping[str, str]) -> WorkloadView:
        """The memoized view for the workload named by ``context_extensions``."""
        key = frozenset(context_extensions.items()) if context_extensions else None
        view = self._views.get(key)
        if view is None:
            view = self._build(key, context_extensions)
            RECENT_WORKLOADS.add(key, context_extensions)
        return view

    def _build(self, key: Any, context_extensions: Mapping[str, str]) -> WorkloadView:
        view = self.view_for(Workload.from_context(context_extensions, self.default_namespace))
        if len(self._views) >= self.MAX_VIEWS:
            self._views.clear()
        self._views[key] = view
        return view

    def warm(self, workloads: RecentWorkloads | None = None) -> None:
        """Build now the views of the workloads recently asked for (of any set).

        The loader calls this in its worker thread, so the first Checks after a reload find
        their views ready instead of building them (a 10,000-rule view takes tens of ms) on
        the event loop.
        """
        for key, context in (workloads or RECENT_WORKLOADS).items():
            if key not in self._views:
                self._build(key, context)

    def view_for(self, workload: Workload) -> WorkloadView:
        """Build the view for ``workload`` (not memoized)."""
        applicable = tuple(p for p in self.policies if p.applies_to(workload, self.root_namespace))

        def rules(action: str, dry: bool) -> RuleIndex:
            return RuleIndex([
                r for p in applicable if p.action == action and p.dry_run == dry for r in p.rules
            ])

        jwt_rules = tuple(
            r for a in self.authentications if a.applies_to(workload, self.root_namespace)
            for r in a.rules
        )
        return WorkloadView(
            workload=workload,
            policies=applicable,
            deny=rules("DENY", False),
            allow=rules("ALLOW", False),
            audit=rules("AUDIT", False),
            has_allow=any(p.action == "ALLOW" and not p.dry_run for p in applicable),
            dry_deny=rules("DENY", True),
            dry_allow=rules("ALLOW", True),
            has_dry_allow=any(p.action == "ALLOW" and p.dry_run for p in applicable),
            has_dry_run=any(p.dry_run for p in applicable),
            jwt_rules=jwt_rules,
            allow_policy_keys=tuple(p.key for p in applicable
                                    if p.action == "ALLOW" and not p.dry_run),
        )

    @property
    def rule_count(self) -> int:
        """Total number of rules across all policies."""
        return sum(len(p.rules) for p in self.policies)

    def describe(self) -> dict[str, Any]:
        """JSON-able form for ``/config``."""
        return {
            "root_namespace": self.root_namespace,
            "default_namespace": self.default_namespace,
            "trust_domain": self.trust_domains.domain,
            "trust_domain_aliases": list(self.trust_domains.aliases),
            "files": list(self.files),
            "authorization_policies": [p.describe() for p in self.policies],
            "request_authentications": [
                {"namespace": a.namespace, "name": a.name, "selector": dict(a.selector),
                 "jwt_rules": [r.describe() for r in a.rules]}
                for a in self.authentications
            ],
        }


__all__ = ["RECENT_WORKLOADS", "PolicySet", "RecentWorkloads", "WorkloadView"]
