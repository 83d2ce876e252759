"""Istio/Envoy RBAC conformance of the engine (issue 8 §1): each case is one Istio semantic.

The expected verdicts are what Istio's generated RBAC gives in Envoy 1.40 for the same request
(the matcher shapes are Istio's ``pilot/pkg/security/authz/model/generator.go``; the header
behaviour was checked in a real Envoy 1.40).
"""

from __future__ import annotations

from typing import Any

import pytest

from extauthz.jwt import AuthnOutcome, JwtRule, identity_from
from extauthz.matchers import AuthIdentity
from extauthz.trustdomain import TrustDomains

NS = {"namespace": "foo", "label.app": "httpbin"}


def policy(rule: str, action: str = "ALLOW", name: str = "p") -> str:
    """One policy in namespace foo with a single rule (YAML flow text)."""
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: foo}}
spec:
  action: {action}
  rules:
  - {rule}
"""


def token(**claims: Any) -> AuthnOutcome:
    """A verified token with these claims, shaped as the authenticator shapes them."""
    rule = JwtRule(policy="foo/jwt", index=0, issuer=str(claims.get("iss", "")),
                   audiences=frozenset(), locations=())
    return AuthnOutcome(identity=identity_from(claims, rule))


def verdict(h: Any, text: str, authn: AuthnOutcome | None = None, **kwargs: Any) -> str:
    """The verdict for a request built from ``kwargs`` under the policies in ``text``."""
    trust = kwargs.pop("trust_domains", None)
    ps = h.policies(text, trust_domains=trust) if trust else h.policies(text)
    path = kwargs.pop("path", "/")
    return str(h.evaluate(ps, h.request(path, context_extensions=NS, **kwargs), authn).verdict)


# -- repeated and empty headers --------------------------------------------------------------

ROLE_DENY = policy('{when: [{key: "request.headers[x-role]", values: ["guest"]}]}', "DENY")
ROLE_ALLOW = policy('{when: [{key: "request.headers[x-role]", values: ["guest"]}]}')


@pytest.mark.parametrize(("headers", "deny_verdict", "allow_verdict"), [
    ({"x-role": ["admin", "guest"]}, "deny", "allow"),
    ({"x-role": ["guest", "admin"]}, "deny", "allow"),
    ({"x-role": "admin,guest"}, "allow", "deny"),
    ({"x-role": "guest"}, "deny", "allow"),
    ({}, "allow", "deny"),
])
def test_repeated_header_lines_match_line_by_line(h: Any, headers: dict[str, Any],
                                                  deny_verdict: str, allow_verdict: str) -> None:
    """Each line of a repeated header is matched on its own (Envoy's RBAC header matcher)."""
    assert verdict(h, ROLE_DENY, headers=headers) == deny_verdict
    assert verdict(h, ROLE_ALLOW, headers=headers) == allow_verdict


def test_repeated_header_lines_with_prefix_suffix_and_not_values(h: Any) -> None:
    """Prefix, suffix and notValues also see each line, not the comma-joined value."""
    two = {"x-role": ["admin", "guest"]}
    prefix = policy('{when: [{key: "request.headers[x-role]", values: ["gu*"]}]}', "DENY")
    suffix = policy('{when: [{key: "request.headers[x-role]", values: ["*min"]}]}', "DENY")
    not_values = policy('{when: [{key: "request.headers[x-role]", notValues: ["guest"]}]}')
    assert verdict(h, prefix, headers=two) == "deny"
    assert verdict(h, suffix, headers=two) == "deny"
    assert verdict(h, not_values, headers=two) == "deny"
    assert verdict(h, not_values, headers={"x-role": "admin"}) == "allow"


def test_empty_header_value_is_present_for_star(h: Any) -> None:
    """A header sent with an empty value is present for "*" (Envoy's present_match)."""
    values = policy('{when: [{key: "request.headers[x-flag]", values: ["*"]}]}')
    not_values = policy('{when: [{key: "request.headers[x-flag]", notValues: ["*"]}]}', "DENY")
    assert verdict(h, values, headers={"x-flag": ""}) == "allow"
    assert verdict(h, values) == "deny"
    assert verdict(h, not_values, headers={"x-flag": ""}) == "allow"
    assert verdict(h, not_values) == "deny"


def test_empty_header_value_is_not_an_exact_or_prefix_match(h: Any) -> None:
    """An empty value matches neither an exact value nor a prefix."""
    exact = policy('{when: [{key: "request.headers[x-flag]", values: ["on", "o*"]}]}')
    assert verdict(h, exact, headers={"x-flag": ""}) == "deny"


# -- requestPrincipals -----------------------------------------------------------------------

TENANT = policy('{from: [{source: {requestPrincipals: ["https://example.com/*"]}}]}')


def test_request_principal_issuer_is_exact_not_a_prefix(h: Any) -> None:
    """`iss/*` needs exactly that issuer: a longer issuer sharing the prefix is not it."""
    assert verdict(h, TENANT, token(iss="https://example.com", sub="u")) == "allow"
    assert verdict(h, TENANT, token(iss="https://example.com/tenant", sub="u")) == "deny"


@pytest.mark.parametrize("value", ["*", "https://example.com/*", "https://example.com/u*",
                                   "*example", "https://example*"])
def test_request_principal_needs_a_non_empty_subject(h: Any, value: str) -> None:
    """A token with `sub: ""` matches neither `*` nor prefix or suffix forms."""
    text = policy(f'{{from: [{{source: {{requestPrincipals: ["{value}"]}}}}]}}')
    assert verdict(h, text, token(iss="https://example.com", sub="")) == "deny"


@pytest.mark.parametrize(("value", "iss", "sub", "expected"), [
    ("https://example.com/alice", "https://example.com", "alice", "allow"),
    ("https://example.com/alice", "https://example.com/alice", "", "deny"),
    ("*/alice", "anything", "alice", "allow"),
    ("*/alice", "", "alice", "deny"),
    ("*.com/alice", "https://example.com", "alice", "allow"),
    ("https://example.com/al*", "https://example.com", "alice", "allow"),
    ("https://example.com/al*", "https://example.com/x", "alice", "deny"),
    ("*", "i", "s", "allow"),
    ("issuer-only*", "issuer-only-x", "s", "allow"),
    ("issuer-only", "issuer-only", "", "allow"),
    ("issuer-only", "issuer-only", "issuer-only", "deny"),
    ("*suffix", "i", "my-suffix", "allow"),
    ("*suffix", "i", "", "deny"),
])
def test_request_principal_split_at_last_slash(h: Any, value: str, iss: str, sub: str,
                                               expected: str) -> None:
    """Values split at the last "/" into an issuer and a subject matcher, as Istio's."""
    text = policy(f'{{from: [{{source: {{requestPrincipals: ["{value}"]}}}}]}}')
    assert verdict(h, text, token(iss=iss, sub=sub)) == expected


def test_request_principal_condition_key_uses_the_same_split(h: Any) -> None:
    """`request.auth.principal` in `when` matches like requestPrincipals."""
    text = policy('{when: [{key: request.auth.principal, values: ["https://example.com/*"]}]}')
    assert verdict(h, text, token(iss="https://example.com/tenant", sub="u")) == "deny"
    assert verdict(h, text, token(iss="https://example.com", sub="u")) == "allow"


def test_request_principal_missing_or_non_string_sub_does_not_match(h: Any) -> None:
    """Without a string `sub` no requestPrincipals value matches (not even `*`)."""
    text = policy('{from: [{source: {requestPrincipals: ["*"]}}]}')
    assert verdict(h, text, token(iss="https://example.com")) == "deny"
    assert verdict(h, text, token(iss="https://example.com", sub=7)) == "deny"


def test_presenter_list_is_matched_element_wise(h: Any) -> None:
    """`azp` given as a list matches when any string element matches (Istio's list matcher)."""
    text = policy('{when: [{key: request.auth.presenter, values: ["cli"]}]}')
    assert verdict(h, text, token(iss="i", sub="s", azp=["web", "cli"])) == "allow"
    assert verdict(h, text, token(iss="i", sub="s", azp="cli")) == "allow"
    assert verdict(h, text, token(iss="i", sub="s", azp=["web"])) == "deny"
    assert verdict(h, text, token(iss="i", sub="s", azp=[1, "x"])) == "deny"


# -- principals: full SPIFFE URI against every SAN ---------------------------------------------

ALLOW_PRINCIPAL = policy('{from: [{source: {principals: ["allow"]}}]}')
DENY_PRINCIPAL = policy('{from: [{source: {principals: ["cluster.local/ns/x/sa/bad"]}}]}',
                        "DENY")


def test_principal_is_matched_with_its_spiffe_scheme(h: Any) -> None:
    """`principals: [allow]` is `spiffe://allow`: a SAN `allow` or a DNS SAN `allow` is not it."""
    assert verdict(h, ALLOW_PRINCIPAL, peer_uri_sans=["spiffe://allow"]) == "allow"
    assert verdict(h, ALLOW_PRINCIPAL, peer_uri_sans=["allow"]) == "deny"
    assert verdict(h, ALLOW_PRINCIPAL, peer_dns_sans=["allow"]) == "deny"
    assert verdict(h, ALLOW_PRINCIPAL, source_principal="allow") == "deny"


def test_every_uri_san_is_tried(h: Any) -> None:
    """A second URI SAN is matched too, so it cannot slip past a DENY."""
    sans = ["spiffe://cluster.local/ns/x/sa/good", "spiffe://cluster.local/ns/x/sa/bad"]
    assert verdict(h, DENY_PRINCIPAL, peer_uri_sans=sans) == "deny"
    assert verdict(h, DENY_PRINCIPAL, peer_uri_sans=sans[:1]) == "allow"


def test_star_principal_needs_an_authenticated_peer(h: Any) -> None:
    """`*` matches any peer name (a DNS SAN or the subject too), none without a peer."""
    text = policy('{from: [{source: {principals: ["*"]}}]}')
    assert verdict(h, text, peer_dns_sans=["web.example"]) == "allow"
    assert verdict(h, text, peer_subject="CN=web") == "allow"
    assert verdict(h, text) == "deny"


def test_suffix_principal_is_a_spiffe_regex(h: Any) -> None:
    """`*suffix` is `spiffe://.*suffix`: a non-SPIFFE name with the suffix does not match."""
    text = policy('{from: [{source: {principals: ["*/sa/sleep"]}}]}')
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/a/sa/sleep"]) == "allow"
    assert verdict(h, text, peer_dns_sans=["x/sa/sleep"]) == "deny"


def test_not_principals_without_a_peer_is_true(h: Any) -> None:
    """notPrincipals on an unauthenticated request is NOT(no match): it holds."""
    text = policy('{from: [{source: {notPrincipals: ["cluster.local/ns/x/sa/bad"]}}]}')
    assert verdict(h, text) == "allow"
    assert verdict(h, text, peer_uri_sans=["spiffe://a", "spiffe://cluster.local/ns/x/sa/bad"]
                   ) == "deny"


def test_source_principal_is_the_fallback_without_a_certificate(h: Any) -> None:
    """With no certificate, the CheckRequest's source.principal is the one peer name."""
    text = policy('{from: [{source: {principals: ["cluster.local/ns/x/sa/ok"]}}]}')
    assert verdict(h, text, source_principal="spiffe://cluster.local/ns/x/sa/ok") == "allow"


# -- namespaces, serviceAccounts -------------------------------------------------------------

def test_namespace_is_istios_regex_over_every_segment(h: Any) -> None:
    """A DENY on namespace `evil` catches `.../ns/foo/sa/x/ns/evil/y` (regex `.*/ns/evil/.*`)."""
    text = policy('{from: [{source: {namespaces: ["evil"]}}]}', "DENY")
    assert verdict(h, text, peer_uri_sans=["spiffe://cluster.local/ns/foo/sa/x/ns/evil/y"]
                   ) == "deny"
    assert verdict(h, text, peer_uri_sans=["spiffe://cluster.local/ns/foo/sa/x"]) == "allow"


def test_namespace_wildcard_and_second_san(h: Any) -> None:
    """`*` inside a namespace is `.*`; every SAN is tried."""
    text = policy('{from: [{source: {namespaces: ["team-*"]}}]}')
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/other/sa/a",
                                            "spiffe://td/ns/team-a/sa/a"]) == "allow"
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/other/sa/a"]) == "deny"


def test_source_namespace_condition_uses_the_regex(h: Any) -> None:
    """`source.namespace` in `when` is the same regex matcher."""
    text = policy('{when: [{key: source.namespace, values: ["evil"]}]}', "DENY")
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/a/sa/b/ns/evil/c"]) == "deny"


@pytest.mark.parametrize(("san", "expected"), [
    ("spiffe://cluster.local/ns/evil/sa/attacker", "deny"),
    ("spiffe://cluster.local/ns/evil/sa/attacker/v2", "deny"),
    ("spiffe://cluster.local/ns/evil/x/y/sa/attacker", "deny"),
    ("spiffe://cluster.local/ns/evil/sa/attacker-2", "allow"),
    ("spiffe://cluster.local/ns/other/sa/attacker", "allow"),
])
def test_service_account_is_istios_pattern(h: Any, san: str, expected: str) -> None:
    """serviceAccounts `ns/sa` follow Istio's regex: trailing segments still match."""
    text = policy('{from: [{source: {serviceAccounts: ["evil/attacker"]}}]}', "DENY")
    assert verdict(h, text, peer_uri_sans=[san]) == expected


def test_service_account_needs_a_trust_domain(h: Any) -> None:
    """`spiffe:///ns/my-ns/sa/my-sa` (empty trust domain) is not admitted."""
    text = policy('{from: [{source: {serviceAccounts: ["my-ns/my-sa"]}}]}')
    assert verdict(h, text, peer_uri_sans=["spiffe:///ns/my-ns/sa/my-sa"]) == "deny"
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/my-ns/sa/my-sa"]) == "allow"


def test_service_account_without_namespace_is_the_policy_namespace(h: Any) -> None:
    """A bare `sa` means the policy's namespace; `source.serviceAccount` works in `when`."""
    text = policy('{from: [{source: {serviceAccounts: ["web"]}}]}')
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/foo/sa/web"]) == "allow"
    assert verdict(h, text, peer_uri_sans=["spiffe://td/ns/bar/sa/web"]) == "deny"
    cond = policy('{when: [{key: source.serviceAccount, values: ["bar/web"]}]}')
    assert verdict(h, cond, peer_uri_sans=["spiffe://td/ns/bar/sa/web"]) == "allow"


# -- trust domains ---------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "san", "expected"), [
    ('{from: [{source: {trustDomains: ["td1"]}}]}', "spiffe://td1/ns/a/sa/b", "allow"),
    ('{from: [{source: {trustDomains: ["td1"]}}]}', "spiffe://td10/ns/a/sa/b", "deny"),
    ('{from: [{source: {trustDomains: ["*"]}}]}', "spiffe://x/ns/a/sa/b", "allow"),
    ('{from: [{source: {trustDomains: ["*.corp"]}}]}', "spiffe://a.corp/ns/a/sa/b", "allow"),
    ('{from: [{source: {trustDomains: ["*.corp"]}}]}', "spiffe://a/b.corp/ns/a", "deny"),
    ('{from: [{source: {notTrustDomains: ["td1"]}}]}', "spiffe://td1/ns/a/sa/b", "deny"),
    ('{from: [{source: {notTrustDomains: ["td1"]}}]}', "spiffe://td2/ns/a/sa/b", "allow"),
    ('{when: [{key: source.trustDomain, values: ["td2"]}]}', "spiffe://td2/ns/a/sa/b", "allow"),
])
def test_trust_domain_fields(h: Any, rule: str, san: str, expected: str) -> None:
    """trustDomains/notTrustDomains and source.trustDomain match Istio's SPIFFE patterns."""
    assert verdict(h, policy(rule), peer_uri_sans=[san]) == expected


def test_trust_domain_aliases_expand_principals(h: Any) -> None:
    """A principal naming `td1` also matches `td2` when the mesh says they are aliases."""
    text = policy('{from: [{source: {principals: ["td1/ns/foo/sa/web"]}}]}')
    trust = TrustDomains("td1", ("td2",))
    assert verdict(h, text, peer_uri_sans=["spiffe://td2/ns/foo/sa/web"],
                   trust_domains=trust) == "allow"
    assert verdict(h, text, peer_uri_sans=["spiffe://td2/ns/foo/sa/web"]) == "deny"
    assert verdict(h, text, peer_uri_sans=["spiffe://td3/ns/foo/sa/web"],
                   trust_domains=trust) == "deny"


def test_cluster_local_principal_means_the_local_trust_domain(h: Any) -> None:
    """`cluster.local/...` stands for the local trust domain and its aliases (Istio's rule),
    so with another local trust domain it no longer matches `cluster.local` itself."""
    text = policy('{from: [{source: {principals: ["cluster.local/ns/foo/sa/web"]}}]}')
    trust = TrustDomains("td1", ("some-td",))
    for td, expected in (("td1", "allow"), ("some-td", "allow"), ("cluster.local", "deny")):
        assert verdict(h, text, peer_uri_sans=[f"spiffe://{td}/ns/foo/sa/web"],
                       trust_domains=trust) == expected


def test_trust_domain_aliases_expand_trust_domain_fields(h: Any) -> None:
    """trustDomains naming a member of the bundle accept every member."""
    text = policy('{from: [{source: {trustDomains: ["td2"]}}]}')
    trust = TrustDomains("td1", ("td2",))
    assert verdict(h, text, peer_uri_sans=["spiffe://td1/ns/a/sa/b"], trust_domains=trust
                   ) == "allow"


def test_trust_domain_bundle_rewrites_like_istios_golden_pair() -> None:
    """The bundle td1 + [cluster.local, some-td] rewrites as Istio's td-aliases golden file."""
    trust = TrustDomains("td1", ("cluster.local", "some-td"))
    assert trust.replace_aliases(["some-td/ns/r/sa/p", "other/ns/r/sa/p", "*/ns/r/sa/p",
                                  "not-spiffe"]) == [
        "td1/ns/r/sa/p", "cluster.local/ns/r/sa/p", "some-td/ns/r/sa/p",
        "other/ns/r/sa/p", "*/ns/r/sa/p", "not-spiffe",
    ]
    assert TrustDomains.parse("", " a, b ,") == TrustDomains("cluster.local", ("a", "b"))


# -- SNI, paths, source.ip -------------------------------------------------------------------

def test_sni_is_compared_lower_cased(h: Any) -> None:
    """An upper-case SNI is lower-cased as Envoy hands it to RBAC: it cannot pass a notValues
    DENY."""
    text = policy('{when: [{key: connection.sni, notValues: ["api.example.com"]}]}', "DENY")
    assert verdict(h, text, sni="API.Example.COM") == "allow"
    assert verdict(h, text, sni="other.example.com") == "deny"


def test_path_without_leading_slash_is_accepted(h: Any) -> None:
    """A path without a leading "/" loads; as exact/prefix it matches no real path."""
    text = policy('{to: [{operation: {paths: ["admin", "api*"]}}]}', "DENY")
    assert verdict(h, text, path="/admin") == "allow"
    assert verdict(h, text, path="/api") == "allow"
    suffix = policy('{to: [{operation: {notPaths: ["png"]}}]}')
    assert verdict(h, suffix, path="/x.png") == "allow"


def test_ip_blocks_use_the_physical_peer(h: Any) -> None:
    """ipBlocks and source.ip read the physical peer; remoteIpBlocks the (PROXY) remote."""
    ip_blocks = policy('{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}')
    remote = policy('{from: [{source: {remoteIpBlocks: ["9.9.9.9"]}}]}')
    source_ip = policy('{when: [{key: source.ip, values: ["10.1.1.1"]}]}')
    proxied = {"source_ip": "9.9.9.9", "direct_source_ip": "10.1.1.1"}
    assert verdict(h, ip_blocks, **proxied) == "allow"
    assert verdict(h, source_ip, **proxied) == "allow"
    assert verdict(h, remote, **proxied) == "allow"
    assert verdict(h, ip_blocks, source_ip="9.9.9.9") == "deny"
    assert verdict(h, ip_blocks, source_ip="10.2.2.2") == "allow"


def test_hand_built_identity_without_claims_has_no_request_principal(h: Any) -> None:
    """requestPrincipals read the token's iss/sub claims, not a pre-joined principal string."""
    text = policy('{from: [{source: {requestPrincipals: ["*"]}}]}')
    bare = AuthnOutcome(identity=AuthIdentity(principal="i/s", claims={}))
    assert verdict(h, text, bare) == "deny"


# -- experimental.envoy.filters.* ------------------------------------------------------------

META = {"envoy.filters.a.b": {"c": "gold", "tags": ["x", "vip"], "n": 3.0}}


@pytest.mark.parametrize(("cond", "expected"), [
    ('{key: "experimental.envoy.filters.a.b[c]", values: ["gold"]}', "allow"),
    ('{key: "experimental.envoy.filters.a.b[c]", values: ["go*"]}', "allow"),
    ('{key: "experimental.envoy.filters.a.b[c]", values: ["[gold]"]}', "deny"),
    ('{key: "experimental.envoy.filters.a.b[tags]", values: ["[vip]"]}', "allow"),
    ('{key: "experimental.envoy.filters.a.b[tags]", values: ["vip"]}', "deny"),
    ('{key: "experimental.envoy.filters.a.b[n]", values: ["3"]}', "deny"),
    ('{key: "experimental.envoy.filters.a.b[missing]", values: ["*"]}', "deny"),
    ('{key: "experimental.envoy.filters.a.b[missing]", notValues: ["x"]}', "allow"),
    ('{key: "experimental.envoy.filters.a.b[c]", notValues: ["gold"]}', "deny"),
])
def test_experimental_envoy_filter_metadata(h: Any, cond: str, expected: str) -> None:
    """experimental.envoy.filters.<f>[<k>] match dynamic metadata: strings, "[v]" lists."""
    assert verdict(h, policy(f"{{when: [{cond}]}}"), metadata=META) == expected


def test_experimental_key_needs_a_bracketed_name(h: Any) -> None:
    """A key without "[name]" is Istio's "bad key" error."""
    from envoy_mixer.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"bad key \(experimental.envoy.filters.a\[\]\)"):
        h.policies(policy('{when: [{key: "experimental.envoy.filters.a[]", values: ["x"]}]}'))
