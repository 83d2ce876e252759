"""The loader: accepted Istio YAML shapes, and one error file per failure with its exact text."""

# ruff: noqa: E501  (the exact error messages are asserted whole, so some lines are long)

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from extauthz.policy import load_policies

ERRORS = Path(__file__).parent / "testdata" / "errors"

EXPECTED_ERRORS = {
    "bad_action": "Input should be 'ALLOW', 'DENY', 'AUDIT' or 'CUSTOM' (line 6, field spec.action)",
    "bad_api_version": "unsupported apiVersion 'security.istio.io/v1alpha1' for AuthorizationPolicy (expected security.istio.io/v1 or security.istio.io/v1beta1) (line 1, field apiVersion)",
    "bad_cidr": "invalid IP address or CIDR block '10.0.0.300' (line 9, field spec.rules[0].from[0].source.ipBlocks[1])",
    "bad_port": "invalid port 'http' (expected 0..65535) (line 9, field spec.rules[0].to[0].operation.ports[0])",
    "bad_template": "path template '/foo/{**}/bar/{*}': '{**}' must be the last operator (line 9, field spec.rules[0].to[0].operation.paths[0])",
    "condition_without_values": 'condition needs at least one of values or notValues (line 8, field spec.rules[0].when[0])',
    "custom_action": 'action CUSTOM is not supported: this service is the external authorizer itself; write the rule as ALLOW or DENY (line 7, field spec.action)',
    "custom_deny_on_allow": "annotation 'authz.envoy-mixer.io/deny-status' is only valid on DENY policies (line 6, field metadata.annotations.authz.envoy-mixer.io/deny-status)",
    "dry_run_value": 'annotation \'istio.io/dry-run\' must be "true" or "false", got \'yes\' (line 6, field metadata.annotations.istio.io/dry-run)',
    "duplicate": 'duplicate AuthorizationPolicy default/same (first defined at duplicate.yaml:1) (line 10, field metadata.name)',
    "empty_value": 'empty string is not a valid value (line 9, field spec.rules[0].to[0].operation.methods[1])',
    "jwks_file_missing": 'cannot read jwksUri file: No such file or directory (line 8, field spec.jwtRules[0].jwksUri)',
    "jwt_bad_inline_jwks": "JWKS must be a JSON object with a 'keys' list (line 8, field spec.jwtRules[0].jwks)",
    "jwt_without_keys": 'one of jwks or jwksUri is required (there is no OIDC discovery here) (line 7, field spec.jwtRules[0])',
    "target_refs": 'targetRefs is not supported (there is no Kubernetes here): use selector.matchLabels with the workload labels the Envoy sends (line 7, field spec.targetRefs)',
    "unknown_attribute": "unknown attribute 'request.regex.headers[x]' (supported: request.headers[<name>], source.ip, remote.ip, destination.ip, destination.port, source.namespace, source.principal, source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.presenter, request.auth.audiences, connection.sni, request.auth.claims[<claim>][<nested>...], experimental.envoy.filters.<filter>[<key>]) (line 8, field spec.rules[0].when[0].key)",
    "unknown_condition": "unknown attribute: 'destination.labels' is replaced by the workload selector (line 8, field spec.rules[0].when[0].key)",
    "unknown_key": "unknown key 'path' (line 9, field spec.rules[0].to[0].operation.path)",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_error_file_reports_file_line_field(name: str) -> None:
    """Each invalid policy file fails to load with this exact message (file, line, field)."""
    with pytest.raises(ConfigError) as info:
        load_policies(ERRORS / f"{name}.yaml")
    assert str(info.value) == f"{name}.yaml: {EXPECTED_ERRORS[name]}"


def test_every_error_file_has_an_expectation() -> None:
    """No error fixture is left without its asserted message."""
    assert sorted(p.stem for p in ERRORS.glob("*.yaml")) == sorted(EXPECTED_ERRORS)


def test_directory_with_several_errors_reports_all(tmp_path: Path) -> None:
    """A directory load gathers the errors of every file."""
    for name in ("bad_cidr", "bad_port"):
        (tmp_path / f"{name}.yaml").write_text((ERRORS / f"{name}.yaml").read_text())
    with pytest.raises(ConfigErrors) as info:
        load_policies(tmp_path)
    assert [e.file for e in info.value.errors] == ["bad_cidr.yaml", "bad_port.yaml"]


KUBECTL_LIST = """
apiVersion: v1
kind: List
items:
- apiVersion: security.istio.io/v1beta1
  kind: AuthorizationPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: '{"x": 1}'
    creationTimestamp: "2024-01-01T00:00:00Z"
    generation: 1
    name: httpbin
    namespace: foo
    resourceVersion: "123"
    uid: 0b3c
  spec:
    action: ALLOW
    rules:
    - from:
      - source:
          principals: ["cluster.local/ns/default/sleep"]
  status: {}
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {name: jwt, namespace: foo}
  spec:
    jwtRules:
    - issuer: https://issuer.example
      jwksUri: https://issuer.example/jwks.json
- apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: strict, namespace: foo}
  spec: {mtls: {mode: STRICT}}
"""


def test_kubectl_output_loads_as_is(tmp_path: Path) -> None:
    """`kubectl get -o yaml` output (List, server fields, status, other kinds) loads unchanged."""
    path = tmp_path / "cluster.yaml"
    path.write_text(KUBECTL_LIST)
    ps = load_policies(path)
    assert [p.key for p in ps.policies] == ["foo/httpbin"]
    assert [a.key for a in ps.authentications] == ["foo/jwt"]
    assert ps.authentications[0].rules[0].jwks_uri == "https://issuer.example/jwks.json"


def test_full_rule_compiles_and_describes(h: Any) -> None:
    """A policy using every field compiles and /config shows it."""
    ps = h.policies("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: full, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin, version: v1}}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["a"]
        notPrincipals: ["b"]
        requestPrincipals: ["iss/sub"]
        notRequestPrincipals: ["x/y"]
        namespaces: ["ns"]
        notNamespaces: ["other"]
        ipBlocks: ["1.2.3.4/32"]
        notIpBlocks: ["5.6.7.8"]
        remoteIpBlocks: ["9.9.9.9"]
        notRemoteIpBlocks: ["8.8.8.8"]
    to:
    - operation:
        hosts: ["h"]
        notHosts: ["nh"]
        ports: ["80", 443]
        notPorts: ["8080"]
        methods: ["GET"]
        notMethods: ["POST"]
        paths: ["/p", "/t/{*}"]
        notPaths: ["/np"]
    when:
    - key: request.headers[x]
      values: ["v"]
      notValues: ["nv"]
""")
    desc = ps.describe()["authorization_policies"][0]
    assert desc["selector"] == {"app": "httpbin", "version": "v1"}
    assert len(desc["rules"][0]["from"][0]) == 10
    assert len(desc["rules"][0]["to"][0]) == 8
    assert len(desc["rules"][0]["when"]) == 2
