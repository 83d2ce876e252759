"""The decision: request attributes + compiled policies -> allow/deny, and why.

Pure (no I/O, no gRPC). ``decide`` is what ``Check`` runs; ``explain`` runs the same
evaluation and additionally reports, for every loaded policy, whether it applies to the workload
and why each of its rules did or did not match. Istio's order:

1. a present but invalid JWT -> 401 (RequestAuthentication);
2. any matching DENY policy -> deny;
3. no ALLOW policy applies to the workload -> allow;
4. any matching ALLOW policy -> allow;
5. otherwise deny.

AUDIT matches never change the verdict; they are reported so the caller can log them.
Dry-run policies (``istio.io/dry-run: "true"``) are evaluated separately, like Istio's shadow
rules: a matching dry-run DENY, or dry-run ALLOW policies none of which matches, yield a
"dry-run deny" that is reported and never enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from extauthz.compile import CompiledRule, Policy
from extauthz.index import RuleIndex
from extauthz.jwt import NO_TOKEN, AuthnOutcome
from extauthz.matchers import Attributes
from extauthz.model import DEFAULT_DENY
from extauthz.policyset import PolicySet, WorkloadView
from extauthz.request import AuthzRequest

Verdict = Literal["allow", "deny", "unauthenticated"]

DENY_BODY = DEFAULT_DENY.body


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule named the Istio way, with its policy."""

    policy: str
    rule_id: str
    action: str

    @classmethod
    def of(cls, policy: Policy, rule: CompiledRule) -> RuleRef:
        """Reference to ``rule`` of ``policy``."""
        return cls(policy=policy.key, rule_id=rule.name, action=policy.action)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict and everything the servicer needs to answer Envoy and to log it."""

    verdict: Verdict
    status: int
    reason: str
    decided_by: RuleRef | None = None
    body: str = ""
    response_headers: tuple[tuple[str, str], ...] = ()
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    params_to_remove: tuple[str, ...] = ()
    audit: RuleRef | None = None
    dry_run_denied: bool = False
    dry_run_reason: str | None = None
    dry_run_by: RuleRef | None = None
    principal: str | None = None

    @property
    def allowed(self) -> bool:
        """True if the request may proceed."""
        return self.verdict == "allow"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for logs, ``explain --json`` and ``test``."""
        out: dict[str, Any] = {"verdict": self.verdict, "status": self.status,
                               "reason": self.reason}
        if self.decided_by:
            out["policy"] = self.decided_by.policy
            out["rule"] = self.decided_by.rule_id
        if self.audit:
            out["audit_rule"] = self.audit.rule_id
        if self.dry_run_denied:
            out["dry_run"] = {"verdict": "deny", "reason": self.dry_run_reason,
                              "rule": self.dry_run_by.rule_id if self.dry_run_by else None}
        if self.headers_to_add:
            out["headers_to_add"] = dict(self.headers_to_add)
        return out


def unauthenticated(error: str, request: AuthzRequest) -> Decision:
    """The 401 Envoy's jwt_authn would send for an invalid token."""
    return Decision(
        verdict="unauthenticated", status=401, reason=error, body=error,
        response_headers=(("www-authenticate",
                           f'Bearer realm="http://{request.host}{request.path}", '
                           'error="invalid_token"'),),
    )


class DecisionCache:
    """The decisions (and rule references) already built, per deciding rule, for one set.

    Decisions are immutable, and with a given rule deciding they are always the same object,
    so a Check that hits a rule seen before allocates nothing. The cache serves one
    ``PolicySet`` at a time: a request against another set (after a reload) starts it afresh,
    so no reload's rules outlive their set here. ``max_entries`` bounds it for sets with more
    rules than anyone hits (it is cleared when full).
    """

    __slots__ = ("_decisions", "_policies", "_refs", "max_entries")

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._policies: PolicySet | None = None
        self._decisions: dict[CompiledRule, Decision] = {}
        self._refs: dict[CompiledRule, RuleRef] = {}

    def __len__(self) -> int:
        return len(self._decisions) + len(self._refs)

    def _for(self, policies: PolicySet) -> None:
        if self._policies is not policies or len(self) >= self.max_entries:
            self._policies = policies
            self._decisions = {}
            self._refs = {}

    def ref(self, policies: PolicySet, rule: CompiledRule) -> RuleRef:
        """The shared ``RuleRef`` of ``rule``."""
        if self._policies is not policies:
            self._for(policies)
        ref = self._refs.get(rule)
        if ref is None:
            self._for(policies)
            ref = self._refs[rule] = RuleRef.of(policies.policy(rule.policy_index), rule)
        return ref

    def decision(self, policies: PolicySet, rule: CompiledRule) -> Decision:
        """The shared decision of a matching ``rule`` (its policy's action decides)."""
        if self._policies is not policies:
            self._for(policies)
        decision = self._decisions.get(rule)
        if decision is None:
            policy = policies.policy(rule.policy_index)
            ref = self.ref(policies, rule)
            if policy.action == "DENY":
                custom = policy.deny_response
                decision = Decision(
                    verdict="deny", status=custom.status, reason="matched a DENY policy",
                    decided_by=ref, body=custom.body, response_headers=custom.headers)
            else:
                decision = Decision(verdict="allow", status=200,
                                    reason="matched an ALLOW policy", decided_by=ref)
            self._decisions[rule] = decision
        return decision


#: The cache ``decide`` uses unless given one (the service decides on one set at a time).
DEFAULT_CACHE = DecisionCache()


def _match(policies: PolicySet, index: RuleIndex, attrs: Attributes,
           cache: DecisionCache) -> RuleRef | None:
    rule = index.first_match(attrs)
    if rule is None:
        return None
    return cache.ref(policies, rule)


NO_ALLOW_POLICY = Decision(verdict="allow", status=200,
                           reason="no ALLOW policy applies to the workload")
NO_ALLOW_MATCH = Decision(verdict="deny", status=403, reason="no ALLOW policy matched",
                          body=DENY_BODY)


def _base_decision(policies: PolicySet, view: WorkloadView, attrs: Attributes,
                   cache: DecisionCache) -> Decision:
    """The enforced verdict alone; results are shared immutable objects per deciding rule."""
    deny = view.deny
    if deny.rules:
        at = deny.first_position(attrs)
        if at >= 0:
            return cache.decision(policies, deny.rules[at])
    if not view.has_allow:
        return NO_ALLOW_POLICY
    allow = view.allow
    at = allow.first_position(attrs)
    if at < 0:
        return NO_ALLOW_MATCH
    return cache.decision(policies, allow.rules[at])


def authorize(policies: PolicySet, view: WorkloadView, attrs: Attributes,
              cache: DecisionCache = DEFAULT_CACHE) -> Decision:
    """Steps 2-5 of Istio's evaluation over ``view``'s enforced policies (plus audit/dry-run)."""
    decision = _base_decision(policies, view, attrs, cache)
    audit = _match(policies, view.audit, attrs, cache) if view.audit.rules else None
    principal = attrs.auth_principal
    if audit is None and not view.has_dry_run and principal is None:
        return decision
    dry_denied, dry_reason, dry_by = False, None, None
    if view.has_dry_run:
        dry_denied, dry_reason, dry_by = _dry_run(policies, view, attrs, cache)
    return replace(decision, audit=audit, dry_run_denied=dry_denied, dry_run_reason=dry_reason,
                   dry_run_by=dry_by, principal=principal)


def _dry_run(policies: PolicySet, view: WorkloadView, attrs: Attributes,
             cache: DecisionCache) -> tuple[bool, str | None, RuleRef | None]:
    denied = _match(policies, view.dry_deny, attrs, cache) if len(view.dry_deny) else None
    if denied is not None:
        return True, "matched a dry-run DENY policy", denied
    if view.has_dry_allow and _match(policies, view.dry_allow, attrs, cache) is None:
        return True, "no dry-run ALLOW policy matched", None
    return False, None, None


def decide(
    policies: PolicySet,
    view: WorkloadView,
    request: AuthzRequest,
    authn: AuthnOutcome = NO_TOKEN,
    *,
    trusted_proxies: int = 0,
    cache: DecisionCache = DEFAULT_CACHE,
) -> Decision:
    """The full decision for ``request`` given the authentication outcome."""
    if authn.error is not None:
        return unauthenticated(authn.error, request)
    attrs = Attributes(request, authn.identity, trusted_proxies)
    decision = authorize(policies, view, attrs, cache)
    if decision.allowed and (authn.headers_to_add or authn.headers_to_remove
                             or authn.params_to_remove):
        return _with_authn_headers(decision, authn)
    return decision


def _with_authn_headers(decision: Decision, authn: AuthnOutcome) -> Decision:
    return replace(decision, headers_to_add=authn.headers_to_add,
                   headers_to_remove=authn.headers_to_remove,
                   params_to_remove=authn.params_to_remove)


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleReport:
    """One rule's outcome: matched, or the reason it did not."""

    rule_id: str
    matched: bool
    reason: str | None


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """One policy's outcome for the request."""

    policy: str
    action: str
    dry_run: bool
    applies: bool
    summary: str
    rules: tuple[RuleReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "policy": self.policy, "action": self.action, "dry_run": self.dry_run,
            "applies": self.applies, "summary": self.summary,
            "rules": [{"rule": r.rule_id, "matched": r.matched, "reason": r.reason}
                      for r in self.rules],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision plus a report per loaded policy."""

    decision: Decision
    workload: str
    authentication: str
    policies: tuple[PolicyReport, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"decision": self.decision.to_dict(), "workload": self.workload,
                "authentication": self.authentication,
                "policies": [p.to_dict() for p in self.policies]}

    def render(self) -> str:
        """Human-readable report."""
        d = self.decision
        lines = [f"verdict: {d.verdict.upper()} ({d.status})", f"reason: {d.reason}"]
        if d.decided_by:
            lines.append(f"decided by: {d.decided_by.rule_id} ({d.decided_by.action})")
        if d.dry_run_denied:
            by = f" ({d.dry_run_by.rule_id})" if d.dry_run_by else ""
            lines.append(f"dry-run: would DENY: {d.dry_run_reason}{by}")
        if d.audit:
            lines.append(f"audit: {d.audit.rule_id}")
        lines.append(f"workload: {self.workload}")
        lines.append(f"authentication: {self.authentication}")
        for h, v in d.headers_to_add:
            lines.append(f"header to upstream: {h}: {v}")
        lines.append("policies:")
        if not self.policies:
            lines.append("  (none loaded)")
        for p in self.policies:
            flag = " dry-run" if p.dry_run else ""
            lines.append(f"  {p.policy} [{p.action}{flag}]: {p.summary}")
            for r in p.rules:
                state = "MATCH" if r.matched else f"no match: {r.reason}"
                lines.append(f"    {r.rule_id}: {state}")
        return "\n".join(lines)


def _scope_reason(policy: Policy, view: WorkloadView, root: str) -> str:
    wl = view.workload
    if policy.namespace not in (wl.namespace, root):
        return f"not in scope: namespace '{policy.namespace}' is neither the workload's " \
               f"'{wl.namespace}' nor the root namespace '{root}'"
    missing = [f"{k}={v}" for k, v in policy.selector if wl.labels.get(k) != v]
    return f"not in scope: selector {', '.join(missing)} does not match the workload labels"


def explain(
    policies: PolicySet,
    view: WorkloadView,
    request: AuthzRequest,
    authn: AuthnOutcome = NO_TOKEN,
    *,
    trusted_proxies: int = 0,
) -> Explanation:
    """``decide`` plus a per-policy, per-rule account of the evaluation."""
    decision = decide(policies, view, request, authn, trusted_proxies=trusted_proxies)
    labels = ",".join(f"{k}={v}" for k, v in sorted(view.workload.labels.items()))
    workload = f"namespace={view.workload.namespace} labels={{{labels}}}"
    if authn.error:
        authentication = f"invalid token: {authn.error}"
    elif authn.identity:
        authentication = f"valid token, request.auth.principal={authn.identity.principal}"
    else:
        authentication = "no token (no request principal)"
    attrs = Attributes(request, authn.identity, trusted_proxies)
    applicable = {p.index for p in view.policies}
    reports = []
    for policy in policies.policies:
        if policy.index not in applicable:
            reports.append(PolicyReport(policy.key, policy.action, policy.dry_run, False,
                                        _scope_reason(policy, view, policies.root_namespace)))
            continue
        if not policy.rules:
            reports.append(PolicyReport(policy.key, policy.action, policy.dry_run, True,
                                        "no rules: matches nothing"))
            continue
        rules = []
        for rule in policy.rules:
            why = rule.explain(attrs)
            rules.append(RuleReport(rule.name, why is None, why))
        matched = [r.rule_id for r in rules if r.matched]
        summary = f"matched {matched[0]}" if matched else "no rule matched"
        reports.append(PolicyReport(policy.key, policy.action, policy.dry_run, True, summary,
                                    tuple(rules)))
    return Explanation(decision, workload, authentication, tuple(reports))
