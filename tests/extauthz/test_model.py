"""The neutral policy model: every Istio field lands under Istio's attribute name."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from extauthz.loader import load_model_text
from extauthz.model import (
    DEFAULT_DENY,
    Condition,
    DenyResponse,
    OperationModel,
    PolicyModel,
    RuleModel,
    SourceModel,
)

FULL = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: full
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: api, version: v1}}
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/a/sa/b]
        notPrincipals: ["*/sa/evil"]
        requestPrincipals: [iss/sub]
        notRequestPrincipals: ["*"]
        namespaces: [a]
        notNamespaces: [b]
        ipBlocks: [10.0.0.0/8]
        notIpBlocks: [10.1.0.0/16]
        remoteIpBlocks: [1.2.3.4]
        notRemoteIpBlocks: [5.6.7.8]
        trustDomains: [td]
        notTrustDomains: [other]
    - source: {serviceAccounts: [ns/sa], notServiceAccounts: [bad]}
    to:
    - operation:
        hosts: [a.com]
        notHosts: [b.com]
        methods: [GET]
        notMethods: [POST]
        paths: [/x/*]
        notPaths: [/x/admin]
        ports: [8080]
        notPorts: ["9090"]
    when:
    - {key: "request.headers[X-Role]", values: [admin], notValues: [guest]}
    - {key: destination.port, values: [443]}
    - {key: "request.auth.claims[groups][0]", notValues: [banned]}
  - {}
"""


def _policy(text: str = FULL) -> PolicyModel:
    models = load_model_text(text)
    assert len(models.policies) == 1
    return models.policies[0]


def test_policy_carries_action_dry_run_selector_and_origin() -> None:
    """Action, dry-run, the selector (sorted pairs), file and line are on the policy."""
    p = _policy()
    assert (p.namespace, p.name, p.key, p.action, p.dry_run) == (
        "shop", "full", "shop/full", "DENY", True)
    assert p.selector == (("app", "api"), ("version", "v1"))
    assert (p.file, p.line) == ("policy.yaml", 2)
    assert p.deny_response == DEFAULT_DENY and not p.case_insensitive_paths


def test_rules_are_named_the_istio_way() -> None:
    """Rule i of policy p in namespace ns is ns[ns]-policy[p]-rule[i]; {} is an empty rule."""
    p = _policy()
    assert [r.name for r in p.rules] == ["ns[shop]-policy[full]-rule[0]",
                                         "ns[shop]-policy[full]-rule[1]"]
    assert p.rules[1] == RuleModel(name="ns[shop]-policy[full]-rule[1]", index=1)


def test_source_fields_become_attribute_conditions() -> None:
    """Each from.source field and its not-twin are one condition on Istio's attribute."""
    first, second = _policy().rules[0].from_
    assert first == SourceModel((
        Condition("source.principal", ("cluster.local/ns/a/sa/b",), ("*/sa/evil",)),
        Condition("source.namespace", ("a",), ("b",)),
        Condition("source.trustDomain", ("td",), ("other",)),
        Condition("request.auth.principal", ("iss/sub",), ("*",)),
        Condition("source.ip", ("10.0.0.0/8",), ("10.1.0.0/16",)),
        Condition("remote.ip", ("1.2.3.4",), ("5.6.7.8",)),
    ))
    assert second.get("source.serviceAccount") == Condition(
        "source.serviceAccount", ("ns/sa",), ("bad",))
    assert second.get("source.principal") is None


def test_operation_fields_become_attribute_conditions() -> None:
    """Hosts, methods, paths and ports use Istio's :authority, :method, path-matcher, port."""
    (op,) = _policy().rules[0].to
    assert op == OperationModel((
        Condition(":authority", ("a.com",), ("b.com",)),
        Condition(":method", ("GET",), ("POST",)),
        Condition("path-matcher", ("/x/*",), ("/x/admin",)),
        Condition("destination.port", ("8080",), ("9090",)),
    ))


def test_when_conditions_keep_the_key_and_string_values() -> None:
    """A when key is the attribute as written; values and notValues become strings."""
    when = _policy().rules[0].when
    assert when == (
        Condition("request.headers[X-Role]", ("admin",), ("guest",)),
        Condition("destination.port", ("443",)),
        Condition("request.auth.claims[groups][0]", (), ("banned",)),
    )
    assert when[0].header == "x-role" and when[1].header is None


def test_extension_annotations_land_in_the_model() -> None:
    """The custom deny response and case-insensitive paths are model fields."""
    p = _policy("""
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny
  annotations:
    authz.envoy-mixer.io/deny-status: "429"
    authz.envoy-mixer.io/deny-body: slow down
    authz.envoy-mixer.io/deny-headers: '{Retry-After: 5}'
    authz.envoy-mixer.io/case-insensitive-paths: "true"
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/Admin]}}]}]
""")
    assert p.namespace == "default" and p.selector == () and not p.dry_run
    assert p.deny_response == DenyResponse(429, "slow down", (("retry-after", "5"),))
    assert p.case_insensitive_paths


def test_no_rules_and_audit_policies() -> None:
    """A policy without rules has an empty rule tuple; AUDIT is kept as the action."""
    p = _policy("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: ns}
spec: {action: AUDIT}
""")
    assert (p.action, p.rules) == ("AUDIT", ())


def test_request_authentication_is_modelled_with_its_scope(signer: Any) -> None:
    """A RequestAuthentication becomes an Authentication with selector and JWT rules."""
    models = load_model_text(f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: https://issuer
    jwks: {json.dumps(signer.jwks)}
""")
    (authn,) = models.authentications
    assert (authn.key, authn.selector) == ("shop/jwt", (("app", "api"),))
    assert [r.issuer for r in authn.rules] == ["https://issuer"]
    assert models.policies == () and models.files == ("policy.yaml",)


def test_model_is_immutable() -> None:
    """Model objects are frozen: a reader can never change what the evaluator compiled."""
    p = _policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rules[0].when[0].values = ("x",)  # type: ignore[misc]
