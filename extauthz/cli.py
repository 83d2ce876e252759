"""``mixer authz``: serve ext_authz, ``explain`` one request, ``test`` a table of requests.

- ``mixer authz --policy PATH [--listen H:P] [--admin H:P] ...`` serves (the default form);
- ``mixer authz explain --policy PATH [request flags]`` prints the verdict and why
  (exit 0 allow, 1 deny/401, 2 config error);
- ``mixer authz test --policy PATH CASES.yaml`` runs a table of cases
  (exit 0 all pass, 1 any mismatch, 2 config or cases error).

The policy options (``--policy``, namespaces, trust domains, ``--trusted-proxies``) may stand
before or after ``explain``/``test`` and fall back to their ``MIXER_AUTHZ_*`` variables.
Importing this module builds parsers only: everything heavy (grpc, pydantic, joserfc,
asyncio) is imported inside the command that needs it, so ``mixer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envoy_mixer.runtime.settings import add_server_arguments, env_default

SERVICE = "authz"
DEFAULT_LISTEN = "127.0.0.1:9191"
DEFAULT_ADMIN = "127.0.0.1:9192"


def _policy_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    # On explain/test the defaults are SUPPRESS: argparse copies every attribute a subcommand
    # sets over the parent's, so a real default there would undo `mixer authz --policy P
    # explain`. Unset, the parent's value (flag or environment variable) stands.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if sub else value

    parser.add_argument(
        "--policy", metavar="PATH", default=default(env_default(SERVICE, "policy", None)),
        help="AuthorizationPolicy/RequestAuthentication YAML file or directory "
             "(env MIXER_AUTHZ_POLICY)",
    )
    parser.add_argument(
        "--default-namespace",
        default=default(env_default(SERVICE, "default-namespace", "default")),
        help="namespace of a workload whose Envoy sends no 'namespace' context extension, and "
             "of policies without metadata.namespace (default 'default')",
    )
    parser.add_argument(
        "--root-namespace",
        default=default(env_default(SERVICE, "root-namespace", "istio-system")),
        help="policies in this namespace apply mesh-wide (default 'istio-system')",
    )
    parser.add_argument(
        "--trusted-proxies", type=int,
        default=default(int(env_default(SERVICE, "trusted-proxies", "0") or 0)), metavar="N",
        help="proxies in front of Envoy trusted to append X-Forwarded-For; remote.ip is the "
             "address N hops left of the direct peer (default 0: the peer itself)",
    )
    parser.add_argument(
        "--trust-domain", default=default(env_default(SERVICE, "trust-domain", "cluster.local")),
        help="the mesh's trust domain (Istio meshConfig.trustDomain; default 'cluster.local'; "
             "env MIXER_AUTHZ_TRUST_DOMAIN)",
    )
    parser.add_argument(
        "--trust-domain-aliases",
        default=default(env_default(SERVICE, "trust-domain-aliases", "")), metavar="TD[,TD...]",
        help="aliases of the trust domain (meshConfig.trustDomainAliases): a principal naming "
             "one of them matches all (env MIXER_AUTHZ_TRUST_DOMAIN_ALIASES)",
    )


def trust_domains_from(args: argparse.Namespace) -> Any:
    """The ``TrustDomains`` the flags name."""
    from extauthz.trustdomain import TrustDomains

    return TrustDomains.parse(args.trust_domain, args.trust_domain_aliases)


def register(subparsers: Any) -> None:
    """Add ``mixer authz`` (serve, ``explain``, ``test``)."""
    parser = subparsers.add_parser(
        "authz", help="ext_authz policy service (Istio AuthorizationPolicy/RequestAuthentication)",
        description="Serve envoy.service.auth.v3.Authorization/Check from Istio policies, or "
                    "explain/test policies offline.",
    )
    build_parser(parser)


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Fill ``parser`` with the serve flags and the ``explain``/``test`` subcommands."""
    _policy_options(parser, sub=False)
    add_server_arguments(parser, service=SERVICE, listen=DEFAULT_LISTEN, admin=DEFAULT_ADMIN)
    parser.add_argument(
        "--jwks-refresh", type=float, default=float(env_default(SERVICE, "jwks-refresh", "600")
                                                    or 600), metavar="SECONDS",
        help="how often jwksUri key sets are re-fetched (default 600)",
    )
    parser.add_argument(
        "--max-request-headers-kb", type=int, metavar="KB",
        default=int(env_default(SERVICE, "max-request-headers-kb", "60") or 60),
        help="the Envoy listener's max_request_headers_kb (default 60, Envoy's): JWT output "
             "headers that would push a request past it are left out and logged",
    )
    parser.add_argument(
        "--max-headers-count", type=int, metavar="N",
        default=int(env_default(SERVICE, "max-headers-count", "100") or 100),
        help="the Envoy listener's max_headers_count (default 100, Envoy's), likewise",
    )
    parser.set_defaults(func=serve_command)
    sub = parser.add_subparsers(dest="authz_command", metavar="{explain,test}")

    explain = sub.add_parser("explain", help="evaluate one request and say which policy/rule "
                                             "decided and why the others did not")
    _policy_options(explain, sub=True)
    explain.add_argument("--method", default="GET")
    explain.add_argument("--path", default="/", help="request path (a query is stripped)")
    explain.add_argument("--host", default="", help=":authority, e.g. httpbin.foo:8000")
    explain.add_argument("--header", "-H", action="append", default=[], metavar="NAME:VALUE",
                         help="a request header line (repeat a name for several lines)")
    explain.add_argument("--source-principal", help="mTLS peer, e.g. "
                                                    "spiffe://cluster.local/ns/foo/sa/sleep")
    explain.add_argument("--peer-uri-san", action="append", default=[], metavar="URI",
                         help="a URI SAN of the peer certificate (repeatable; replaces "
                              "--source-principal)")
    explain.add_argument("--source-ip", help="the connection's remote address")
    explain.add_argument("--direct-source-ip", help="the physical peer behind the PROXY "
                                                    "protocol (default --source-ip)")
    explain.add_argument("--destination-ip")
    explain.add_argument("--destination-port", type=int)
    explain.add_argument("--sni")
    explain.add_argument("--jwt", help="token sent as 'Authorization: Bearer <jwt>'")
    explain.add_argument("--namespace", help="workload namespace (context extension)")
    explain.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                         help="workload label (context extension label.NAME)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(func=explain_command)

    test = sub.add_parser("test", help="run a YAML table of requests with expected verdicts")
    _policy_options(test, sub=True)
    test.add_argument("cases", metavar="CASES.yaml", type=Path)
    test.add_argument("--verbose", "-v", action="store_true", help="also print passing cases")
    test.set_defaults(func=test_command)
    return parser


MISSING_POLICY = "required: --policy PATH (or MIXER_AUTHZ_POLICY)"


def _load(args: argparse.Namespace) -> Any:
    from extauthz.policy import load_policies

    return load_policies(Path(args.policy), default_namespace=args.default_namespace,
                         root_namespace=args.root_namespace,
                         trust_domains=trust_domains_from(args))


def serve_command(args: argparse.Namespace) -> int:
    """Run the gRPC service until SIGTERM (``envoy_mixer.runtime.serve``)."""
    from envoy_mixer.runtime.serve import serve, usage_error

    if not args.policy:
        return usage_error("mixer authz", MISSING_POLICY)
    from envoy_mixer.runtime.settings import ServerSettings
    from extauthz.app import build_service

    return serve(SERVICE, ServerSettings.from_args(SERVICE, args), lambda: build_service(
        Path(args.policy), default_namespace=args.default_namespace,
        root_namespace=args.root_namespace, trusted_proxies=args.trusted_proxies,
        jwks_refresh=args.jwks_refresh, trust_domains=trust_domains_from(args),
        max_request_headers_kb=args.max_request_headers_kb,
        max_headers_count=args.max_headers_count,
    ))


def _request_from_flags(args: argparse.Namespace) -> Any:
    from extauthz.cases import RequestSpec

    headers: dict[str, list[str]] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header expects NAME:VALUE, got {item!r}")
        # A repeated -H is a header sent on several lines (matched line by line, as Envoy).
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    labels: dict[str, str] = {}
    for item in args.label:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--label expects NAME=VALUE, got {item!r}")
        labels[name.strip()] = value.strip()
    return RequestSpec.model_validate(dict(
        method=args.method, path=args.path, host=args.host, headers=headers,
        sourcePrincipal=args.source_principal, sourceIp=args.source_ip,
        peerUriSans=args.peer_uri_san, directSourceIp=args.direct_source_ip,
        destinationIp=args.destination_ip, destinationPort=args.destination_port,
        sni=args.sni, jwt=args.jwt, namespace=args.namespace, labels=labels,
    )).to_request()


async def _evaluate(policies: Any, request: Any, trusted_proxies: int, explain: bool) -> Any:
    from extauthz.engine import decide
    from extauthz.engine import explain as explain_fn
    from extauthz.jwt import Authenticator

    view = policies.view(request.context_extensions)
    authn = await Authenticator().authenticate(view.jwt_rules, request)
    if explain:
        return explain_fn(policies, view, request, authn, trusted_proxies=trusted_proxies)
    return decide(policies, view, request, authn, trusted_proxies=trusted_proxies)


def explain_command(args: argparse.Namespace) -> int:
    """Print the verdict for one request and the reasons."""
    import asyncio
    import json

    from envoy_mixer.common.errors import ConfigError

    if not args.policy:
        print(f"mixer authz explain: {MISSING_POLICY}", file=sys.stderr)
        return 2
    try:
        policies = _load(args)
        request = _request_from_flags(args)
    except ConfigError as exc:
        print(f"policy error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mixer authz explain: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(_evaluate(policies, request, args.trusted_proxies, explain=True))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
    return 0 if result.decision.allowed else 1


def test_command(args: argparse.Namespace) -> int:
    """Run every case; print failures (and passes with -v); exit 1 on any mismatch."""
    import asyncio

    from envoy_mixer.common.errors import ConfigError
    from extauthz.cases import load_cases

    if not args.policy:
        print(f"mixer authz test: {MISSING_POLICY}", file=sys.stderr)
        return 2
    try:
        policies = _load(args)
        cases = load_cases(args.cases)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run_all() -> list[Any]:
        return [await _evaluate(policies, c.request.to_request(), args.trusted_proxies,
                                explain=False) for c in cases]

    decisions = asyncio.run(run_all())
    failed = 0
    for case, decision in zip(cases, decisions, strict=True):
        problems = check_case(case, decision)
        if problems:
            failed += 1
            print(f"FAIL {case.name} ({args.cases}:{case.line}): {'; '.join(problems)}")
        elif args.verbose:
            by = f" by {decision.decided_by.rule_id}" if decision.decided_by else ""
            print(f"PASS {case.name}: {decision.verdict}{by}")
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def check_case(case: Any, decision: Any) -> list[str]:
    """Mismatches between a case's expectations and a decision (empty when it passes)."""
    problems = []
    got_by = decision.decided_by
    if decision.verdict != case.expect:
        problems.append(f"expected {case.expect}, got {decision.verdict} ({decision.reason}"
                        + (f", {got_by.rule_id})" if got_by else ")"))
    if case.status is not None and decision.status != case.status:
        problems.append(f"expected status {case.status}, got {decision.status}")
    if case.policy is not None:
        got = got_by.policy if got_by else None
        if got != case.policy:
            problems.append(f"expected policy {case.policy}, got {got or 'none'}")
        elif case.rule is not None:
            ns, _, name = case.policy.partition("/")
            want = f"ns[{ns}]-policy[{name}]-rule[{case.rule}]"
            if got_by is None or got_by.rule_id != want:
                problems.append(f"expected rule {want}, got {got_by.rule_id if got_by else None}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m extauthz``: the same CLI as ``mixer authz``."""
    parser = build_parser(argparse.ArgumentParser(prog="python -m extauthz"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
