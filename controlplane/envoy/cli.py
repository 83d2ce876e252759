"""``mixer envoy-config``: print an Envoy bootstrap, snippets or actions; regenerate shipped files.

Flags name who the proxy is (``--workload``, ``--namespace``, labels), where it listens and
where our three services are; the output is one of:

- a bootstrap for ``--role sidecar|ingress|egress`` (the default),
- ``--snippets``: the clusters, filters and per-route settings to paste into another Envoy,
- ``--rate-limit-actions``: only the ``rate_limits`` derived from ``--ratelimit-config``,
- ``--write-shipped [REPO]``: the checked-in ``envoy-configs/`` and ``compose/envoy/`` files.

mTLS: ``--cert-dir DIR`` (what ``mixer ca issue --out DIR`` wrote) gives the proxy its mesh
certificate; every upstream is then called with ISTIO_MUTUAL and a sidecar's inbound port
takes the mode ``--peer-authentication PATH`` resolves for the workload (Istio's precedence),
or ``--mtls MODE``; with neither, PERMISSIVE (Istio's mode when no policy applies). The egress
gateway's listener takes its own mode the same way; a sidecar's ``--egress-host`` routes go to
``--egress-gateway`` with ISTIO_MUTUAL (unless the gateway's mode is DISABLE).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlplane.envoy.model import (
    DEFAULT_TRUST_DOMAIN,
    EGRESS_GATEWAY_NAMESPACE,
    EGRESS_GATEWAY_SERVICE,
    EgressRoute,
    Endpoint,
    InboundMode,
    MeshTls,
    MixerServices,
    ProxyOptions,
    Upstream,
    Workload,
)
from controlplane.envoy.ratelimit_actions import actions_from_config, rate_limits_block
from controlplane.envoy.render import message_to_data, to_yaml, yaml_text
from controlplane.envoy.roles import egress_gateway, ingress_gateway, sidecar
from controlplane.envoy.shipped import write_shipped
from controlplane.envoy.snippets import snippets
from controlplane.security import PeerAuthentication, effective_mtls, load_peer_authentications
from envoy_mixer.common.errors import ConfigError

_REPO = Path(__file__).resolve().parents[2]


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _upstream(text: str) -> tuple[str, Endpoint]:
    name, sep, addr = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME[.NAMESPACE]=HOST:PORT, got {text!r}")
    return name, _endpoint(addr)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def register(subparsers: Any) -> None:
    """Add ``mixer envoy-config``."""
    p = subparsers.add_parser(
        "envoy-config", help="generate Envoy configs (sidecar, ingress, egress) or snippets",
        description="Generate an Envoy bootstrap wired to authz, ratelimit and telemetry.",
    )
    p.add_argument("--role", choices=["sidecar", "ingress", "egress"], default="sidecar")
    p.add_argument("--workload", default=None,
                   help="workload name (default: frontend for sidecars, Istio's gateway names)")
    p.add_argument("--namespace", default=None, help="namespace (default: default/istio-system)")
    p.add_argument("--app", default=None, help="app label (default: the workload name)")
    p.add_argument("--version", default="v1", help="version label (default v1)")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                   help="extra workload label (repeatable)")
    p.add_argument("--ip", default="127.0.0.1", help="workload IP in the node id")
    p.add_argument("--listen-host", default="127.0.0.1",
                   help="listener address (0.0.0.0 in containers)")
    p.add_argument("--admin", type=_endpoint, default=Endpoint("127.0.0.1", 15000),
                   metavar="HOST:PORT", help="Envoy admin address (default 127.0.0.1:15000)")
    p.add_argument("--port", type=int, default=8080, help="gateway listener port (default 8080)")
    p.add_argument("--inbound-port", type=int, default=15006, help="sidecar inbound port")
    p.add_argument("--outbound-port", type=int, default=None,
                   help="sidecar outbound port (omit for no outbound listener)")
    p.add_argument("--app-address", type=_endpoint, default=Endpoint("127.0.0.1", 8080),
                   metavar="HOST:PORT", help="where the sidecar's app listens")
    p.add_argument("--service-port", type=int, default=8080,
                   help="logical service port used in cluster names (default 8080)")
    p.add_argument("--upstream", type=_upstream, action="append", default=[],
                   metavar="NAME[.NS]=HOST:PORT",
                   help="sidecar outbound / ingress target (repeatable for sidecars)")
    p.add_argument("--egress-gateway", type=_endpoint, default=None, metavar="HOST:PORT",
                   help="where the egress gateway listens (for --egress-host)")
    p.add_argument("--egress-host", action="append", default=[], metavar="HOST",
                   help="external host (or *.suffix) the sidecar sends to the egress gateway, "
                        "Host kept (repeatable; needs --egress-gateway and --outbound-port)")
    p.add_argument("--authz", type=_endpoint, default=Endpoint("127.0.0.1", 9191),
                   metavar="HOST:PORT")
    p.add_argument("--ratelimit", type=_endpoint, default=Endpoint("127.0.0.1", 8081),
                   metavar="HOST:PORT")
    p.add_argument("--telemetry", type=_endpoint, default=Endpoint("127.0.0.1", 9401),
                   metavar="HOST:PORT")
    p.add_argument("--tracing", type=_endpoint, default=None, metavar="HOST:PORT",
                   help="OTLP/gRPC collector (e.g. Jaeger :4317) to enable Envoy tracing")
    p.add_argument("--service-account", default=None,
                   help="service account the workload runs as (default: the workload name; "
                        "Istio's istio-<role>gateway-service-account for gateways)")
    p.add_argument("--cert-dir", type=Path, default=None, metavar="DIR",
                   help="the proxy's mesh certificate directory (`mixer ca issue --out DIR`): "
                        "turns on mTLS")
    p.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                   help="SPIFFE trust domain of the mesh (default cluster.local)")
    p.add_argument("--peer-authentication", type=Path, default=None, metavar="PATH",
                   help="Istio PeerAuthentication file or directory deciding the inbound mode "
                        "(and plaintext to DISABLE upstreams)")
    p.add_argument("--root-namespace", default="istio-system",
                   help="Istio's root namespace for mesh-wide policies (default istio-system)")
    p.add_argument("--mtls", choices=["STRICT", "PERMISSIVE", "DISABLE"], default=None,
                   help="inbound mode, over --peer-authentication (needs --cert-dir unless "
                        "DISABLE)")
    p.add_argument("--ratelimit-config", type=Path, default=None, metavar="PATH",
                   help="ratelimit config to derive the route rate_limits actions from")
    p.add_argument("--ratelimit-domain", default=None,
                   help="rate-limit domain (default: 'ingress', 'egress' or the workload name)")
    p.add_argument("--xds", type=_endpoint, default=None, metavar="HOST:PORT",
                   help="render the minimal bootstrap of an Envoy that `mixer pilot` at HOST:PORT "
                        "programs (node identity, the xDS cluster, the admin address); "
                        "--workload is NAME.NAMESPACE (or NAME with --namespace)")
    p.add_argument("--mesh", type=Path, default=None, metavar="DIR",
                   help="with --xds: read the workload's labels and role from the mesh directory")
    p.add_argument("--delta", action="store_true",
                   help="with --xds: incremental xDS (DELTA_GRPC) instead of state of the world")
    p.add_argument("-o", "--output", type=Path, default=None, help="write here instead of stdout")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--snippets", action="store_true",
                      help="print filter/cluster snippets for an existing Envoy")
    mode.add_argument("--rate-limit-actions", action="store_true",
                      help="print only the rate_limits actions derived from --ratelimit-config")
    mode.add_argument("--write-shipped", nargs="?", const=_REPO, type=Path, metavar="REPO",
                      help="regenerate the checked-in envoy-configs/ and compose/envoy/ files")
    p.set_defaults(func=run)


def _workload(args: argparse.Namespace) -> Workload:
    gateway = args.role in ("ingress", "egress")
    name = args.workload or (f"istio-{args.role}gateway" if gateway else "frontend")
    namespace = args.namespace or ("istio-system" if gateway else "default")
    labels = list(args.label)
    if gateway and not any(k == "istio" for k, _ in labels):
        labels.append(("istio", f"{args.role}gateway"))
    account = args.service_account or (
        f"istio-{args.role}gateway-service-account" if gateway and not args.workload else None)
    return Workload(name, namespace, app=args.app, version=args.version,
                    extra_labels=tuple(labels), ip=args.ip, service_account=account)


def _mode(args: argparse.Namespace, policies: Sequence[PeerAuthentication], namespace: str,
          labels: dict[str, str]) -> InboundMode:
    if args.mtls is not None:
        mode: InboundMode = args.mtls
        return mode
    return effective_mtls(policies, namespace=namespace, labels=labels,
                          root_namespace=args.root_namespace).for_port(args.service_port)


def mesh_tls(args: argparse.Namespace, workload: Workload,
             policies: Sequence[PeerAuthentication]) -> MeshTls | None:
    """The proxy's mTLS settings from the flags; None for plaintext (no --cert-dir)."""
    mode = _mode(args, policies, workload.namespace, workload.labels)
    if args.cert_dir is None:
        if args.mtls not in (None, "DISABLE"):
            raise ConfigError(f"--mtls {args.mtls} needs --cert-dir (the proxy's certificate)")
        return None
    return MeshTls(cert_dir=str(args.cert_dir.resolve()), mode=mode,
                   trust_domain=args.trust_domain)


def _egress_route(args: argparse.Namespace,
                  policies: Sequence[PeerAuthentication]) -> EgressRoute | None:
    """The sidecar's route to the egress gateway from ``--egress-host``/``--egress-gateway``."""
    if not args.egress_host:
        return None
    if args.egress_gateway is None or args.outbound_port is None:
        raise ConfigError("--egress-host needs --egress-gateway HOST:PORT and --outbound-port")
    # Auto mTLS, as for --upstream: plaintext only if the gateway's own policy says DISABLE.
    mode = effective_mtls(policies, namespace=EGRESS_GATEWAY_NAMESPACE,
                          labels={"app": EGRESS_GATEWAY_SERVICE, "istio": "egressgateway"},
                          root_namespace=args.root_namespace).for_port(args.egress_gateway.port)
    return EgressRoute.to(args.egress_gateway, tuple(args.egress_host),
                          port=args.egress_gateway.port, mtls=mode != "DISABLE")


def build(args: argparse.Namespace) -> str:
    """The requested output text (config, snippets or actions) for parsed arguments."""
    workload = _workload(args)
    domain = args.ratelimit_domain or (args.role if args.role != "sidecar" else workload.name)
    actions = (actions_from_config(args.ratelimit_config, domain)
               if args.ratelimit_config is not None else [])
    services = MixerServices(authz=args.authz, ratelimit=args.ratelimit, telemetry=args.telemetry)
    if args.rate_limit_actions:
        return yaml_text({"domain": domain, "rate_limits": [
            message_to_data(entry) for entry in rate_limits_block(actions)]})
    policies = (tuple(load_peer_authentications(args.peer_authentication))
                if args.peer_authentication is not None else ())
    options = ProxyOptions(listen_host=args.listen_host, admin=args.admin,
                           ratelimit_domain=domain, rate_limits=tuple(actions),
                           tracing=args.tracing, tls=mesh_tls(args, workload, policies))
    upstreams = []
    for name, address in args.upstream:
        service, _, ns = name.partition(".")
        # Istio's auto mTLS: plaintext only to a destination whose policy says DISABLE.
        peer_mode = effective_mtls(policies, namespace=ns or "default", labels={"app": service},
                                   root_namespace=args.root_namespace).for_port(
                                       args.service_port)
        upstreams.append(Upstream(service, address, ns or "default", args.service_port,
                                  mtls=peer_mode != "DISABLE"))
    if args.snippets:
        proxy_type = "sidecar" if args.role == "sidecar" else "router"
        return snippets(services, workload, domain, actions, proxy_type, tls=options.tls,
                        upstreams=[u for u in upstreams if u.mtls])
    if args.role == "sidecar":
        config = sidecar(workload, services, options, inbound_port=args.inbound_port,
                         app=args.app_address, outbound_port=args.outbound_port,
                         upstreams=upstreams, service_port=args.service_port,
                         egress=_egress_route(args, policies))
    elif args.role == "ingress":
        if len(upstreams) != 1:
            raise ConfigError("--role ingress needs exactly one --upstream NAME=HOST:PORT")
        config = ingress_gateway(workload, services, options, port=args.port,
                                 upstream=upstreams[0])
    else:
        config = egress_gateway(workload, services, options, port=args.port)
    return to_yaml(config, f"# Generated by `mixer envoy-config --role {args.role}`.\n")


def run(args: argparse.Namespace) -> int:
    """Handler of ``mixer envoy-config``."""
    if args.xds is not None:
        return _xds_bootstrap(args)
    try:
        if args.write_shipped is not None:
            for path in write_shipped(args.write_shipped):
                print(f"wrote {path}")
            return 0
        text = build(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _xds_bootstrap(args: argparse.Namespace) -> int:
    """``--xds``: the minimal bootstrap, rendered by the control plane's own builder."""
    from controlplane.xds.cli import envoy_config_xds

    if not args.workload:
        print("mixer envoy-config: --xds needs --workload NAME.NAMESPACE", file=sys.stderr)
        return 2
    workload = (args.workload if "." in args.workload
                else f"{args.workload}.{args.namespace or 'default'}")
    return envoy_config_xds(argparse.Namespace(
        xds=args.xds, workload=workload, cert_dir=args.cert_dir, mesh=args.mesh,
        router=args.role != "sidecar", delta=args.delta, admin_address=args.admin,
        output=args.output))
