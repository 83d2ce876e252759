"""`mixer authz` command line: serve form parsing, explain and test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from envoy_mixer.cli import build_parser, main
from extauthz import cli

DATA = Path(__file__).parent / "testdata" / "cli"
POLICY = str(DATA / "policy.yaml")


def test_serve_form_parses_with_listen_and_admin() -> None:
    """`mixer authz --policy P --listen H:P --admin H:P` selects the serve handler."""
    args = build_parser().parse_args(
        ["authz", "--policy", "p.yaml", "--listen", "127.0.0.1:1", "--admin", "127.0.0.1:2",
         "--root-namespace", "mesh", "--trusted-proxies", "2"])
    assert args.func is cli.serve_command
    assert (args.policy, args.listen, args.admin) == ("p.yaml", "127.0.0.1:1", "127.0.0.1:2")
    assert (args.root_namespace, args.trusted_proxies) == ("mesh", 2)
    assert (args.max_request_headers_kb, args.max_headers_count) == (60, 100)  # Envoy's


def test_serve_without_policy_is_an_error(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Serving needs --policy (or MIXER_AUTHZ_POLICY): one stderr line, exit 2."""
    monkeypatch.delenv("MIXER_AUTHZ_POLICY", raising=False)
    assert main(["authz"]) == 2
    assert capsys.readouterr().err == (
        "mixer authz: required: --policy PATH (or MIXER_AUTHZ_POLICY)\n")


def test_explain_deny_names_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """explain prints the verdict, the deciding rule and why other policies did not match."""
    code = main(["authz", "explain", "--policy", POLICY, "--path", "/admin/x", "--method",
                 "GET", "--namespace", "foo", "--label", "app=httpbin",
                 "--source-principal", "spiffe://cluster.local/ns/default/sa/sleep"])
    out = capsys.readouterr().out
    assert code == 1
    assert "verdict: DENY (403)" in out
    assert "decided by: ns[foo]-policy[deny-admin]-rule[0] (DENY)" in out
    assert "ns[foo]-policy[httpbin-viewer]-rule[1]: no match: 'when' condition fails: " \
           "when[0].values: request.headers[x-debug] <absent> matches none of ['yes']" in out


def test_explain_json_allow(capsys: pytest.CaptureFixture[str]) -> None:
    """explain --json gives machine-readable output and exit 0 on allow."""
    code = cli.main(["explain", "--policy", POLICY, "--path", "/get", "--namespace", "foo",
                     "--label", "app=httpbin", "-H", "x-debug: yes", "--method", "PUT", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["decision"]["rule"] == "ns[foo]-policy[httpbin-viewer]-rule[1]"


def test_explain_with_jwt_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                               signer: Any) -> None:
    """--jwt is authenticated like a Bearer token and reported."""
    policy = tmp_path / "p.yaml"
    policy.write_text(f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  jwtRules: [{{issuer: "{signer.issuer}", jwks: {json.dumps(signer.jwks)}}}]
""")
    assert cli.main(["explain", "--policy", str(policy), "--jwt", signer.token()]) == 0
    assert f"request.auth.principal={signer.issuer}/alice" in capsys.readouterr().out
    assert cli.main(["explain", "--policy", str(policy), "--jwt", "x.y.z"]) == 1
    assert "verdict: UNAUTHENTICATED (401)" in capsys.readouterr().out


def test_test_command_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """A table whose expectations hold exits 0."""
    assert main(["authz", "test", "--policy", POLICY, str(DATA / "cases.yaml"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "4 passed, 0 failed" in out
    assert "PASS debug header opens it: allow by ns[foo]-policy[httpbin-viewer]-rule[1]" in out


def test_test_command_reports_mismatches(capsys: pytest.CaptureFixture[str]) -> None:
    """Mismatches are listed with file:line and the command exits 1."""
    cases = DATA / "failing_cases.yaml"
    assert main(["authz", "test", "--policy", POLICY, str(cases)]) == 1
    out = capsys.readouterr().out
    assert (f"FAIL anonymous GET (wrongly expected allow) ({cases}:5): expected allow, got deny "
            "(no ALLOW policy matched)") in out
    assert "expected policy foo/httpbin-viewer, got foo/deny-admin" in out
    assert "0 passed, 2 failed" in out


def test_test_command_bad_cases_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed cases file exits 2 naming file, line and field."""
    cases = DATA / "bad_cases.yaml"
    assert main(["authz", "test", "--policy", POLICY, str(cases)]) == 2
    assert f"{cases}: unknown key 'pth' (line 3, field cases[0].request.pth)" in \
        capsys.readouterr().err


def test_policy_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """explain on a broken policy file exits 2 with the located error."""
    bad = Path(__file__).parent / "testdata" / "errors" / "bad_cidr.yaml"
    assert cli.main(["explain", "--policy", str(bad)]) == 2
    assert "bad_cidr.yaml: invalid IP address" in capsys.readouterr().err


def test_validator_error_has_no_pydantic_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """A validator's message is printed as ours, without pydantic's "Value error, " prefix."""
    assert cli.main(["explain", "--policy", str(DATA / "empty_name.yaml")]) == 2
    assert capsys.readouterr().err == (
        "policy error: empty_name.yaml: must not be empty (line 3, field metadata.name)\n")


@pytest.mark.parametrize("command", ["explain", "test"])
def test_policy_flag_before_the_subcommand_is_used(command: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`mixer authz --policy P --root-namespace NS explain` keeps both parent flags."""
    extra = ["--path", "/admin/x", "--namespace", "foo"] if command == "explain" else [
        str(DATA / "cases.yaml")]
    args = build_parser().parse_args(["authz", "--policy", POLICY, "--root-namespace", "mesh",
                                      command, *extra])
    assert (args.policy, args.root_namespace) == (POLICY, "mesh")
    assert main(["authz", "--policy", POLICY, command, *extra]) in (0, 1)
    assert "required" not in capsys.readouterr().err


def test_policy_from_environment_for_explain(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """MIXER_AUTHZ_POLICY stands in for --policy on explain; a flag after it still wins."""
    monkeypatch.setenv("MIXER_AUTHZ_POLICY", POLICY)
    assert main(["authz", "explain", "--path", "/admin/x", "--namespace", "foo"]) == 1
    assert "verdict: DENY (403)" in capsys.readouterr().out
    args = build_parser().parse_args(["authz", "explain", "--policy", "other.yaml"])
    assert args.policy == "other.yaml"


def test_explain_without_any_policy_exits_2(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """No flag and no variable: exit 2 naming both ways to give the policy."""
    monkeypatch.delenv("MIXER_AUTHZ_POLICY", raising=False)
    assert main(["authz", "explain", "--path", "/x"]) == 2
    assert capsys.readouterr().err == (
        "mixer authz explain: required: --policy PATH (or MIXER_AUTHZ_POLICY)\n")


def test_cli_module_imports_nothing_heavy() -> None:
    """Importing extauthz.cli (what `mixer --help` does) loads no grpc, pydantic or joserfc."""
    import subprocess
    import sys

    code = ("import sys, extauthz.cli; "
            "print(sorted(m for m in ('grpc', 'pydantic', 'joserfc', 'aiohttp', 'asyncio', "
            "'extauthz.policy', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
async def test_serve_subprocess_answers_check(start_mixer: Any, free_port: Any) -> None:
    """`mixer authz --policy P --listen --admin` serves Check and /healthz as a real process."""
    import grpc
    from envoy.service.auth.v3 import (
        attribute_context_pb2,
        external_auth_pb2,
        external_auth_pb2_grpc,
    )

    port, admin = free_port(), free_port()
    proc = start_mixer(["authz", "--policy", POLICY, "--listen", f"127.0.0.1:{port}",
                        "--admin", f"127.0.0.1:{admin}"], admin)
    ctx = attribute_context_pb2.AttributeContext
    request = external_auth_pb2.CheckRequest(attributes=ctx(
        request=ctx.Request(http=ctx.HttpRequest(method="GET", path="/admin", host="h")),
        context_extensions={"namespace": "foo"}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(request)
    assert resp.denied_response.status.code == 403
    assert proc.stop() == 0  # SIGTERM drains and exits cleanly


ALIASES_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: foo}
spec:
  rules: [{from: [{source: {principals: ["td1/ns/foo/sa/web"]}}]}]
"""


def test_explain_trust_domain_aliases_flags_and_env(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--trust-domain/--trust-domain-aliases (or their env) make td2 match a td1 principal."""
    policy = tmp_path / "p.yaml"
    policy.write_text(ALIASES_POLICY)
    ask = ["explain", "--policy", str(policy), "--namespace", "foo",
           "--peer-uri-san", "spiffe://other/ns/foo/sa/x",
           "--peer-uri-san", "spiffe://td2/ns/foo/sa/web"]
    assert cli.main(ask) == 1
    assert cli.main([*ask, "--trust-domain", "td1", "--trust-domain-aliases", "td2,td3"]) == 0
    monkeypatch.setenv("MIXER_AUTHZ_TRUST_DOMAIN", "td1")
    monkeypatch.setenv("MIXER_AUTHZ_TRUST_DOMAIN_ALIASES", "td2")
    assert cli.main(ask) == 0
    capsys.readouterr()


def test_explain_repeated_header_flags_are_separate_lines(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A repeated -H NAME is a header sent on several lines, each matched on its own."""
    policy = tmp_path / "p.yaml"
    policy.write_text("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-guest, namespace: foo}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-role]", values: ["guest"]}]}]
""")
    base = ["explain", "--policy", str(policy), "--namespace", "foo"]
    assert cli.main([*base, "-H", "x-role: admin", "-H", "x-role: guest"]) == 1
    assert cli.main([*base, "-H", "x-role: admin,guest"]) == 0
    capsys.readouterr()


def test_cases_file_with_peer_sans_header_lines_and_direct_ip(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Cases accept peerUriSans, header lists and directSourceIp."""
    policy = tmp_path / "p.yaml"
    policy.write_text("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/x/sa/bad"]}}]
  - from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]
  - when: [{key: "request.headers[x-role]", values: ["guest"]}]
""")
    cases = tmp_path / "cases.yaml"
    cases.write_text("""
defaults: {namespace: foo}
cases:
- name: second SAN is checked
  request: {peerUriSans: ["spiffe://a", "spiffe://cluster.local/ns/x/sa/bad"]}
  expect: deny
- name: physical peer, not the PROXY address
  request: {sourceIp: 10.1.1.1, directSourceIp: 192.168.0.1}
  expect: allow
- name: header lines
  request: {headers: {x-role: [admin, guest]}}
  expect: deny
""")
    assert cli.main(["test", "--policy", str(policy), str(cases)]) == 0
    assert "3 passed, 0 failed" in capsys.readouterr().out
