"""The pure engine against Istio's documented AuthorizationPolicy semantics."""

from __future__ import annotations

from typing import Any

import pytest

from extauthz.engine import explain
from extauthz.jwt import AuthnOutcome
from extauthz.matchers import AuthIdentity
from tests.extauthz.policies import NS, allow_policy

# -- evaluation order ----------------------------------------------------------------------


def test_no_policies_allows(h: Any) -> None:
    """With no policy for the workload, every request is allowed."""
    assert h.verdict(h.policies(""), "/anything") == "allow"


def test_empty_spec_allows_nothing(h: Any) -> None:
    """`spec: {}` is an ALLOW policy with no rules: it denies everything."""
    ps = h.policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
""")
    d = h.evaluate(ps, h.request("/", context_extensions=NS))
    assert (d.verdict, d.status, d.body) == ("deny", 403, "RBAC: access denied")


def test_empty_rule_matches_everything(h: Any) -> None:
    """`rules: [{}]` matches every request (allow-all; deny-all with DENY)."""
    allow = h.policies(allow_policy("{}"))
    deny = h.policies(allow_policy("{}", action="DENY"))
    assert h.verdict(allow, "/x", context_extensions=NS) == "allow"
    assert h.verdict(deny, "/x", context_extensions=NS) == "deny"


def test_deny_beats_allow_path_precedence(h: Any) -> None:
    """Istio's path-precedence case: DENY /allow/admin wins over ALLOW /allow*."""
    ps = h.policies(
        allow_policy('{to: [{operation: {paths: ["/allow/admin"]}}]}', "deny", action="DENY")
        + "---" + allow_policy('{to: [{operation: {paths: ["/allow*"]}}]}', "allow"))
    expected = {"/allow/admin": "deny", "/allow/admin?param=value": "deny",
                "/allow": "allow", "/allow?param=value": "allow", "/other": "deny"}
    got = {p: h.verdict(ps, p, context_extensions=NS) for p in expected}
    assert got == expected
    d = h.evaluate(ps, h.request("/allow/admin", context_extensions=NS))
    assert d.decided_by.rule_id == "ns[foo]-policy[deny]-rule[0]"


def test_no_allow_match_denies_without_policy(h: Any) -> None:
    """When ALLOW policies exist and none matches, the deny names no policy."""
    ps = h.policies(allow_policy('{to: [{operation: {methods: ["GET"]}}]}'))
    d = h.evaluate(ps, h.request("/", method="POST", context_extensions=NS))
    assert (d.verdict, d.decided_by, d.reason) == ("deny", None, "no ALLOW policy matched")


def test_audit_never_changes_verdict(h: Any) -> None:
    """An AUDIT match is reported but the verdict comes from ALLOW/DENY."""
    ps = h.policies(allow_policy("{}", "audit-all", action="AUDIT"))
    d = h.evaluate(ps, h.request("/x", context_extensions=NS))
    assert d.verdict == "allow"
    assert d.audit is not None and d.audit.rule_id == "ns[foo]-policy[audit-all]-rule[0]"


# -- operation fields -----------------------------------------------------------------------


@pytest.mark.parametrize(("paths", "path", "verdict"), [
    ('["/info"]', "/info", "allow"),
    ('["/info"]', "/info/x", "deny"),
    ('["/info*"]', "/info/x", "allow"),
    ('["*/suffix"]', "/a/b/suffix", "allow"),
    ('["*/suffix"]', "/a/b/suffi", "deny"),
    ('["*"]', "/whatever", "allow"),
    ('["/info"]', "/info?x=1", "allow"),
    ('["/Info"]', "/info", "deny"),
])
def test_paths_exact_prefix_suffix_presence(h: Any, paths: str, path: str, verdict: str) -> None:
    """paths: exact, prefix*, *suffix and * (query never part of the match; case-sensitive)."""
    ps = h.policies(allow_policy(f"{{to: [{{operation: {{paths: {paths}}}}}]}}"))
    assert h.verdict(ps, path, context_extensions=NS) == verdict


TEMPLATE_CASES = {
    "/allow/admin/": "allow", "/allow/admin/temp": "allow", "/allow/admin/temp.txt": "allow",
    "/allow/admin/foo/temp.txt": "allow", "/foo/buzz/bar/bat.txt": "allow",
    "/foo/buzz/bar/bat.temp.txt": "allow", "/foo/buzz/bar/bat/fuzz.txt": "allow",
    "/foo/buzz/bar/bat": "allow", "/store//cart": "allow", "/store/foo/cart": "allow",
    "/store/foo/bar/cart": "allow", "/allow/admin": "deny", "/allow/user/": "deny",
    "/allow": "deny", "/foo/bar/bat.txt": "deny", "/foo//bar/bat.txt": "deny",
    "/store/cart": "deny",
}


def test_path_templates_match_istio_integration_table(h: Any) -> None:
    """{*} and {**} behave as in Istio's TestAuthz_PathTemplating verdict table."""
    ps = h.policies(allow_policy(
        '{to: [{operation: {paths: ["/allow/admin/{**}", "/foo/{*}/bar/{**}", '
        '"/store/{**}/cart"]}}]}'))
    got = {p: h.verdict(ps, p, context_extensions=NS) for p in TEMPLATE_CASES}
    assert got == TEMPLATE_CASES


def test_hosts_are_case_insensitive_and_keep_port(h: Any) -> None:
    """hosts match ignoring case; the port is part of the authority (no stripping)."""
    ps = h.policies(allow_policy('{to: [{operation: {hosts: ["Example.COM", "*.svc"]}}]}'))
    assert h.verdict(ps, host="example.com", context_extensions=NS) == "allow"
    assert h.verdict(ps, host="EXAMPLE.com", context_extensions=NS) == "allow"
    assert h.verdict(ps, host="a.SVC", context_extensions=NS) == "allow"
    assert h.verdict(ps, host="example.com:443", context_extensions=NS) == "deny"


def test_methods_ports_and_not_fields(h: Any) -> None:
    """methods/ports match exactly; notMethods/notPorts/notPaths/notHosts negate."""
    ps = h.policies(allow_policy(
        '{to: [{operation: {methods: ["GET", "HEAD"], ports: ["8080"], notPaths: ["/private*"],'
        ' notHosts: ["evil.com"]}}]}'))
    ok: dict[str, Any] = {"destination_ip": "10.0.0.1", "destination_port": 8080,
                          "context_extensions": NS}
    assert h.verdict(ps, "/x", **ok) == "allow"
    assert h.verdict(ps, "/x", method="POST", **ok) == "deny"
    assert h.verdict(ps, "/private/a", **ok) == "deny"
    assert h.verdict(ps, "/x", host="EVIL.com", **ok) == "deny"
    assert h.verdict(ps, "/x", **{**ok, "destination_port": 9090}) == "deny"
    not_method = h.policies(allow_policy('{to: [{operation: {notMethods: ["PUT"]}}]}'))
    assert h.verdict(not_method, method="GET", context_extensions=NS) == "allow"
    assert h.verdict(not_method, method="PUT", context_extensions=NS) == "deny"


def test_fields_inside_operation_and_and_operations_or(h: Any) -> None:
    """Fields in one operation are ANDed; operations in `to` are ORed."""
    ps = h.policies(allow_policy(
        '{to: [{operation: {methods: ["GET"], paths: ["/info*"]}}, '
        '{operation: {methods: ["POST"], paths: ["/data"]}}]}'))
    assert h.verdict(ps, "/info/1", method="GET", context_extensions=NS) == "allow"
    assert h.verdict(ps, "/data", method="POST", context_extensions=NS) == "allow"
    assert h.verdict(ps, "/data", method="GET", context_extensions=NS) == "deny"
    assert h.verdict(ps, "/info", method="POST", context_extensions=NS) == "deny"


# -- source fields ------------------------------------------------------------------------


SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


@pytest.mark.parametrize(("source", "kwargs", "verdict"), [
    ('principals: ["cluster.local/ns/default/sa/sleep"]', {"source_principal": SLEEP}, "allow"),
    ('principals: ["cluster.local/ns/default/sa/sleep"]', {}, "deny"),
    ('principals: ["*"]', {"source_principal": SLEEP}, "allow"),
    ('principals: ["*"]', {}, "deny"),
    ('principals: ["*/sa/sleep"]', {"source_principal": SLEEP}, "allow"),
    ('principals: ["cluster.local/ns/default/*"]', {"source_principal": SLEEP}, "allow"),
    ('notPrincipals: ["cluster.local/ns/default/sa/sleep"]', {"source_principal": SLEEP},
     "deny"),
    ('notPrincipals: ["cluster.local/ns/default/sa/sleep"]', {}, "allow"),
    ('namespaces: ["default"]', {"source_principal": SLEEP}, "allow"),
    ('namespaces: ["other"]', {"source_principal": SLEEP}, "deny"),
    ('notNamespaces: ["default"]', {"source_principal": SLEEP}, "deny"),
    ('serviceAccounts: ["default/sleep"]', {"source_principal": SLEEP}, "allow"),
    ('serviceAccounts: ["sleep"]', {"source_principal": SLEEP}, "deny"),  # policy ns is foo
    ('notServiceAccounts: ["default/sleep"]', {"source_principal": SLEEP}, "deny"),
    ('ipBlocks: ["10.0.0.0/8"]', {"source_ip": "10.1.2.3"}, "allow"),
    ('ipBlocks: ["10.0.0.0/8", "2001:db8::/32"]', {"source_ip": "2001:db8::1"}, "allow"),
    ('ipBlocks: ["10.0.0.1"]', {"source_ip": "10.0.0.2"}, "deny"),
    ('notIpBlocks: ["10.0.0.0/8"]', {"source_ip": "10.1.2.3"}, "deny"),
    ('notIpBlocks: ["10.0.0.0/8"]', {"source_ip": "192.168.0.1"}, "allow"),
    ('remoteIpBlocks: ["1.2.3.4"]', {"source_ip": "10.0.0.1",
                                     "headers": {"x-forwarded-for": "1.2.3.4"}}, "deny"),
    ('remoteIpBlocks: ["10.0.0.1"]', {"source_ip": "10.0.0.1",
                                      "headers": {"x-forwarded-for": "1.2.3.4"}}, "allow"),
    ('notRemoteIpBlocks: ["10.0.0.1"]', {"source_ip": "10.0.0.1"}, "deny"),
])
def test_source_fields(h: Any, source: str, kwargs: dict[str, Any], verdict: str) -> None:
    """Every `from.source` field and its notX counterpart (remote.ip trusts no XFF by default)."""
    ps = h.policies(allow_policy(f"{{from: [{{source: {{{source}}}}}]}}"))
    assert h.verdict(ps, "/", context_extensions=NS, **kwargs) == verdict


def test_remote_ip_uses_trusted_proxies(h: Any) -> None:
    """With N trusted proxies, remote.ip is the XFF entry N hops left of the peer."""
    ps = h.policies(allow_policy('{from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}]}'))
    req = h.request("/", source_ip="10.0.0.9", context_extensions=NS,
                    headers={"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.9"})
    assert h.evaluate(ps, req, trusted_proxies=1).verdict == "allow"
    assert h.evaluate(ps, req, trusted_proxies=0).verdict == "deny"
    assert h.evaluate(ps, req, trusted_proxies=2).verdict == "deny"


def test_request_principals_from_jwt_identity(h: Any) -> None:
    """requestPrincipals match `<iss>/<sub>`; `*` needs a token; notRequestPrincipals negate."""
    ps = h.policies(allow_policy('{from: [{source: {requestPrincipals: ["https://iss/*"]}}]}'))
    authn = AuthnOutcome(identity=AuthIdentity(principal="https://iss/alice",
                                              claims={"iss": "https://iss", "sub": "alice"}))
    req = h.request("/", context_extensions=NS)
    assert h.evaluate(ps, req, authn).verdict == "allow"
    assert h.evaluate(ps, req).verdict == "deny"
    star = h.policies(allow_policy('{from: [{source: {requestPrincipals: ["*"]}}]}'))
    assert h.evaluate(star, req).verdict == "deny"
    assert h.evaluate(star, req, authn).verdict == "allow"


# -- when conditions ----------------------------------------------------------------------

CLAIMS = {"iss": "https://iss", "sub": "alice", "groups": ["admins", "dev"],
          "scope": ["read", "write"], "realm": {"roles": ["ops"], "tier": "gold"}, "n": 5}
ID = AuthnOutcome(identity=AuthIdentity(principal="https://iss/alice", claims=CLAIMS,
                                        audiences=("api", "web"), presenter="cli",
                                        presenters=("cli",)))


@pytest.mark.parametrize(("condition", "kwargs", "verdict"), [
    ('{key: "request.headers[X-Token]", values: ["abc"]}', {"headers": {"x-token": "abc"}},
     "allow"),
    ('{key: "request.headers[x-token]", values: ["ab*"]}', {"headers": {"x-token": "abc"}},
     "allow"),
    ('{key: "request.headers[x-token]", values: ["*"]}', {}, "deny"),
    ('{key: "request.headers[x-foo]", notValues: ["bar"]}', {}, "allow"),
    ('{key: "request.headers[x-foo]", notValues: ["bar"]}', {"headers": {"x-foo": "bar"}},
     "deny"),
    ('{key: source.ip, values: ["10.0.0.0/8"]}', {"source_ip": "10.9.9.9"}, "allow"),
    ('{key: remote.ip, values: ["10.9.9.9"]}', {"source_ip": "10.9.9.9"}, "allow"),
    ('{key: destination.ip, values: ["192.168.1.0/24"]}', {"destination_ip": "192.168.1.7"},
     "allow"),
    ('{key: destination.port, values: ["8080"]}', {"destination_ip": "1.1.1.1",
                                                   "destination_port": 8080}, "allow"),
    ('{key: destination.port, notValues: ["8080"]}', {"destination_ip": "1.1.1.1",
                                                      "destination_port": 8080}, "deny"),
    ('{key: source.namespace, values: ["default"]}', {"source_principal": SLEEP}, "allow"),
    ('{key: source.principal, values: ["cluster.local/ns/default/sa/sleep"]}',
     {"source_principal": SLEEP}, "allow"),
    ('{key: connection.sni, values: ["*.example.com"]}', {"sni": "api.example.com"}, "allow"),
    ('{key: request.auth.principal, values: ["https://iss/alice"]}', {}, "allow"),
    ('{key: request.auth.audiences, values: ["web"]}', {}, "allow"),
    ('{key: request.auth.audiences, values: ["other"]}', {}, "deny"),
    ('{key: request.auth.presenter, values: ["cli"]}', {}, "allow"),
    ('{key: "request.auth.claims[groups]", values: ["admins"]}', {}, "allow"),
    ('{key: "request.auth.claims[groups]", notValues: ["admins"]}', {}, "deny"),
    ('{key: "request.auth.claims[scope]", values: ["write"]}', {}, "allow"),
    ('{key: "request.auth.claims[realm][roles]", values: ["ops"]}', {}, "allow"),
    ('{key: "request.auth.claims[realm][tier]", values: ["gold"]}', {}, "allow"),
    ('{key: "request.auth.claims[realm][tier]", values: ["silver"]}', {}, "deny"),
    ('{key: "request.auth.claims[missing]", values: ["*"]}', {}, "deny"),
])
def test_when_conditions(h: Any, condition: str, kwargs: dict[str, Any], verdict: str) -> None:
    """Every supported `when` key with values/notValues (claims include nested and lists)."""
    ps = h.policies(allow_policy(f"{{when: [{condition}]}}"))
    req = h.request("/", context_extensions=NS, **kwargs)
    assert h.evaluate(ps, req, ID).verdict == verdict


def test_conditions_are_anded(h: Any) -> None:
    """All `when` conditions must hold."""
    ps = h.policies(allow_policy(
        '{when: [{key: "request.headers[a]", values: ["1"]}, '
        '{key: "request.headers[b]", values: ["2"]}]}'))
    assert h.verdict(ps, headers={"a": "1", "b": "2"}, context_extensions=NS) == "allow"
    assert h.verdict(ps, headers={"a": "1"}, context_extensions=NS) == "deny"


def test_claims_without_token_do_not_match(h: Any) -> None:
    """A claims condition never matches without a validated token."""
    ps = h.policies(allow_policy('{when: [{key: "request.auth.claims[groups]", '
                                 'values: ["admins"]}]}'))
    assert h.verdict(ps, headers={"authorization": "Bearer x"}, context_extensions=NS) == "deny"


# -- scope ----------------------------------------------------------------------------------


SCOPED = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/mesh-deny"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: default-ns}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/default-deny"]}}]}]
"""


@pytest.mark.parametrize(("ext", "path", "verdict"), [
    ({"namespace": "foo", "label.app": "httpbin"}, "/x", "deny"),
    ({"namespace": "foo", "label.app": "other"}, "/x", "allow"),
    ({"namespace": "bar", "label.app": "httpbin"}, "/x", "allow"),
    ({"namespace": "bar"}, "/mesh-deny", "deny"),
    ({}, "/mesh-deny", "deny"),
    ({}, "/default-deny", "deny"),
    ({"namespace": "foo", "label.app": "other"}, "/default-deny", "allow"),
])
def test_scope_namespace_selector_root(h: Any, ext: dict[str, str], path: str,
                                       verdict: str) -> None:
    """Policies apply by namespace + selector; root namespace is mesh-wide; no ns = default."""
    ps = h.policies(SCOPED)
    assert h.verdict(ps, path, context_extensions=ext) == verdict


def test_configurable_root_and_default_namespace(h: Any) -> None:
    """--root-namespace and --default-namespace change which policies apply."""
    ps = h.policies(SCOPED, root_namespace="foo", default_namespace="bar")
    # Workload without context extensions is in 'bar'; 'foo' is now mesh-wide but the
    # selector still requires app=httpbin.
    assert h.verdict(ps, "/x", context_extensions={"label.app": "httpbin"}) == "deny"
    # The policy without metadata.namespace is now in 'bar', like a workload without identity.
    assert h.verdict(ps, "/default-deny") == "deny"
    assert h.verdict(ps, "/default-deny", context_extensions={"namespace": "default"}) == "allow"


# -- dry-run, custom deny, case-insensitive paths -------------------------------------------


def test_dry_run_deny_is_reported_not_enforced(h: Any) -> None:
    """A dry-run DENY match leaves the request allowed and reports a dry-run deny."""
    ps = h.policies(allow_policy('{to: [{operation: {paths: ["/admin"]}}]}', "dry",
                                 action="DENY",
                                 extra_meta=', annotations: {"istio.io/dry-run": "true"}'))
    d = h.evaluate(ps, h.request("/admin", context_extensions=NS))
    assert (d.verdict, d.dry_run_denied) == ("allow", True)
    assert d.dry_run_by.rule_id == "ns[foo]-policy[dry]-rule[0]"
    assert not h.evaluate(ps, h.request("/x", context_extensions=NS)).dry_run_denied


def test_dry_run_allow_reports_would_deny(h: Any) -> None:
    """Dry-run ALLOW policies none of which matches report a dry-run deny; enforcement unchanged."""
    ps = h.policies(allow_policy('{to: [{operation: {paths: ["/ok"]}}]}', "dry",
                                 extra_meta=', annotations: {"istio.io/dry-run": "true"}'))
    d = h.evaluate(ps, h.request("/nope", context_extensions=NS))
    assert (d.verdict, d.dry_run_denied, d.dry_run_reason) == (
        "allow", True, "no dry-run ALLOW policy matched")
    assert not h.evaluate(ps, h.request("/ok", context_extensions=NS)).dry_run_denied


def test_custom_deny_response_annotations(h: Any) -> None:
    """The opt-in annotations set status, body and headers of a DENY policy's response."""
    meta = (', annotations: {"authz.envoy-mixer.io/deny-status": "418", '
            '"authz.envoy-mixer.io/deny-body": "no tea", '
            '"authz.envoy-mixer.io/deny-headers": "{x-reason: teapot}"}')
    ps = h.policies(allow_policy("{}", "teapot", action="DENY", extra_meta=meta))
    d = h.evaluate(ps, h.request("/", context_extensions=NS))
    assert (d.status, d.body, d.response_headers) == (418, "no tea", (("x-reason", "teapot"),))


def test_case_insensitive_paths_annotation(h: Any) -> None:
    """Paths are case-sensitive (Istio) unless the policy opts into case-insensitive matching."""
    plain = h.policies(allow_policy('{to: [{operation: {paths: ["/admin*"]}}]}', "d",
                                    action="DENY"))
    assert h.verdict(plain, "/ADMIN", context_extensions=NS) == "allow"
    ci = h.policies(allow_policy(
        '{to: [{operation: {paths: ["/admin*", "/x/{*}/Secret"]}}]}', "d", action="DENY",
        extra_meta=', annotations: {"authz.envoy-mixer.io/case-insensitive-paths": "true"}'))
    for path in ("/ADMIN", "/Admin/x", "/admin", "/X/y/SECRET"):
        assert h.verdict(ci, path, context_extensions=NS) == "deny", path
    assert h.verdict(ci, "/public", context_extensions=NS) == "allow"


# -- explain --------------------------------------------------------------------------------


def test_explain_names_decider_and_reasons(h: Any) -> None:
    """explain reports the deciding rule, out-of-scope policies and per-rule failure reasons."""
    ps = h.policies(SCOPED + "---" + allow_policy('{to: [{operation: {methods: ["GET"]}}]}',
                                                 "get-only", ns="bar"))
    req = h.request("/x", method="POST", context_extensions={"namespace": "bar"})
    ex = explain(ps, ps.view(req.context_extensions), req)
    text = ex.render()
    assert ex.decision.verdict == "deny"
    assert "foo/only-httpbin [DENY]: not in scope" in text
    assert "request.method 'POST' matches none of ['GET']" in text
    assert "istio-system/mesh-wide [DENY]: no rule matched" in text


# -- the decision cache ----------------------------------------------------------------------


def test_decisions_are_shared_per_deciding_rule(h: Any) -> None:
    """Two requests decided by the same rule get the same Decision object from the cache."""
    from extauthz.engine import DecisionCache

    ps = h.policies(allow_policy('{to: [{operation: {paths: ["/a*"]}}]}'))
    cache = DecisionCache()
    first = h.evaluate(ps, h.request("/a1", context_extensions=NS), cache=cache)
    again = h.evaluate(ps, h.request("/a2", context_extensions=NS), cache=cache)
    assert first.verdict == "allow" and first is again
    assert first.decided_by is not None
    assert first.decided_by.rule_id == "ns[foo]-policy[p]-rule[0]"


def test_decision_cache_serves_one_policy_set_and_stays_bounded(h: Any) -> None:
    """A new set (a reload) starts the cache afresh; a full cache is cleared, answers stay right."""
    from extauthz.engine import DecisionCache

    rules = ", ".join(f'{{to: [{{operation: {{paths: ["/p{i}"]}}}}]}}' for i in range(8))
    text = allow_policy(rules, action="DENY")
    old, new = h.policies(text), h.policies(text)
    cache = DecisionCache(max_entries=4)
    before = h.evaluate(old, h.request("/p0", context_extensions=NS), cache=cache)
    after = h.evaluate(new, h.request("/p0", context_extensions=NS), cache=cache)
    assert before == after and before is not after
    for i in range(8):
        d = h.evaluate(new, h.request(f"/p{i}", context_extensions=NS), cache=cache)
        assert (d.status, d.decided_by.rule_id) == (403, f"ns[foo]-policy[p]-rule[{i}]")
        assert len(cache) <= 4
