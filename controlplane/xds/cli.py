"""``mixer pilot``, ``mixer proxy-status``, ``mixer proxy-config`` and ``mixer envoy-config-xds``.

- ``mixer pilot --mesh DIR [--listen 127.0.0.1:15010] [--admin 127.0.0.1:15014] [--ca-dir D]
  [--authz H:P --ratelimit H:P --telemetry H:P] [--tracing H:P] [--run-dir DIR]``: the
  control plane (``--tracing``: every generated HTTP listener traces to that OTLP/gRPC
  collector).
- ``mixer envoy-config-xds --xds HOST:PORT --workload NAME.NAMESPACE [--cert-dir D]
  [--mesh DIR] [--admin H:P] [--router]``: the minimal bootstrap of a proxy it serves. (A
  subcommand of its own rather than a flag of ``mixer envoy-config``, whose module is another
  package's.)
- ``mixer proxy-status [--json] [--xds HOST:PORT | --run-dir DIR]`` and
  ``mixer proxy-config listeners|routes|clusters|endpoints|secrets PROXY [--json]``: what
  was pushed, as ``istioctl`` shows it. ``--xds`` names the control plane's debug (admin)
  address; without it the one recorded in the run directory (``.mixer-run/pilot.json`` by
  default) is used.

Exit codes: 0 done, 1 failure (message on stderr), 2 bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.ca.durations import parse_duration
from controlplane.envoy.model import Endpoint, MixerServices
from controlplane.envoy.model import Workload as EnvoyWorkload
from controlplane.envoy.render import to_yaml
from controlplane.xds.types import KINDS, PUSH_ORDER, SHORT
from envoy_mixer.common.logs import configure_logging
from envoy_mixer.runtime.settings import hostport

if TYPE_CHECKING:
    from controlplane.xds.app import PilotSettings

__all__ = ["HELP", "register_envoy_config", "register_pilot", "register_proxy_config",
           "register_proxy_status", "settings_from_args"]

DEFAULT_RUN_DIR = Path(".mixer-run")


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_from_args(args: argparse.Namespace) -> PilotSettings:
    """The ``mixer pilot`` flags as settings."""
    from controlplane.xds.app import PilotSettings

    return PilotSettings(
        mesh=args.mesh, listen=args.listen, admin=args.admin, ca_dir=args.ca_dir,
        services=MixerServices(authz=args.authz, ratelimit=args.ratelimit,
                               telemetry=args.telemetry),
        cert_ttl=parse_duration(args.cert_ttl), run_dir=args.run_dir, tracing=args.tracing,
    )


def _run_pilot(args: argparse.Namespace) -> int:
    from controlplane.ca.errors import CAError
    from controlplane.xds.app import Pilot

    configure_logging(args.log_level)
    settings = settings_from_args(args)

    async def main() -> int:
        try:
            running = await Pilot(settings).start()
        except (OSError, CAError, RuntimeError) as exc:
            print(f"mixer pilot: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await running.stop()
        return 0

    return asyncio.run(main())


def _workload(args: argparse.Namespace) -> tuple[EnvoyWorkload, str]:
    name, _, namespace = args.workload.rpartition(".")
    if args.mesh is not None:
        from controlplane.mesh import load_mesh
        from controlplane.pilot.proxy import proxy_for

        mesh = load_mesh(args.mesh)
        for entry in mesh.workloads:
            if entry.name == name and entry.namespace == namespace:
                proxy = proxy_for(mesh, entry)
                return proxy.identity, proxy.role
        raise ValueError(f"no WorkloadEntry {namespace}/{name} in {args.mesh}")
    return EnvoyWorkload(name=name, namespace=namespace, pod=name), (
        "router" if args.router else "sidecar")


def envoy_config_xds(args: argparse.Namespace) -> int:
    """The minimal bootstrap: `mixer envoy-config --xds` and `mixer envoy-config-xds`."""
    from controlplane.xds.bootstrap import xds_bootstrap

    if "." not in args.workload:
        print("mixer envoy-config-xds: --workload is NAME.NAMESPACE", file=sys.stderr)
        return 2
    try:
        workload, role = _workload(args)
    except Exception as exc:
        print(f"mixer envoy-config-xds: {exc}", file=sys.stderr)
        return 1
    cert_dir = args.cert_dir.resolve() if args.cert_dir is not None else None
    server_san = None
    if cert_dir is not None:
        server_san = _pilot_san(cert_dir)
    text = to_yaml(xds_bootstrap(workload, role, xds=args.xds, admin=args.admin_address,
                                 cert_dir=cert_dir, server_san=server_san, delta=args.delta))
    if args.output is not None:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _pilot_san(cert_dir: Path) -> str | None:
    """The control plane's SPIFFE id in the trust domain of the workload's certificate."""
    from controlplane.ca.files import read_leaf
    from controlplane.xds.debug import certificate_view
    from controlplane.xds.identity import PILOT_IDENTITY

    leaf = read_leaf(cert_dir)
    if leaf is None:
        return None
    uris = certificate_view("", leaf)["san"]
    if not uris or not uris[0].startswith("spiffe://"):
        return None
    trust_domain = uris[0][len("spiffe://"):].split("/", 1)[0]
    namespace, account = PILOT_IDENTITY
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


def _debug_address(args: argparse.Namespace) -> str:
    if args.xds:
        return str(args.xds)
    from controlplane.xds.app import read_pilot_file

    return read_pilot_file(args.run_dir)["admin"]


def _get(address: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _proxy_status(args: argparse.Namespace) -> int:
    try:
        data = _get(_debug_address(args), "/debug/proxy-status")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"mixer proxy-status: no control plane: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    columns = [SHORT[t] for t in PUSH_ORDER]
    header = ["NAME", *columns, "VERSION"]
    rows = [header]
    for proxy in data:
        if not proxy["connected"]:
            continue
        cells = [proxy["proxy"]]
        for short in columns:
            t = proxy["types"][short]
            cells.append(t["state"] + (f" ({t['sent_version']})" if t["sent_version"] else ""))
        cells.append(proxy["snapshot_version"])
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for proxy in data:
        for short, t in proxy["types"].items():
            if t["state"] == "NACKED":
                print(f"\n{proxy['proxy']} {short} NACKED x{t['nack_count']}: {t['nack_message']}")
    return 0


def _proxy_config(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"proxy": args.proxy, "kind": args.kind})
    try:
        data = _get(_debug_address(args), f"/debug/proxy-config?{query}")
    except urllib.error.HTTPError as exc:
        print(f"mixer proxy-config: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"mixer proxy-config: no control plane: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for item in data:
        if args.kind == "secrets":
            print(f"{item['name']:8}  serial {item['serial']}  SAN {','.join(item['san']) or '-'}"
                  f"  expires {item['not_after']}")
        else:
            print(item["name"])
    return 0


def _where_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--xds", type=hostport, metavar="HOST:PORT",
                       help="the control plane's debug (admin) address")
    group.add_argument("--run-dir", type=Path,
                       default=Path(os.environ.get("MIXER_RUN_DIR", str(DEFAULT_RUN_DIR))),
                       help="the mixer up run directory recording the control plane "
                            "(default .mixer-run)")


#: One-line help of each command (``mixer --help`` lists the same text).
HELP = {
    "pilot": "the xDS control plane (Istio's Pilot): serve each Envoy of the mesh over ADS",
    "envoy-config-xds": "the minimal bootstrap of an Envoy served by mixer pilot",
    "proxy-status": "every proxy connected to mixer pilot, per type SYNCED/STALE/NACKED",
    "proxy-config": "what mixer pilot pushed to a proxy (listeners, routes, clusters, ...)",
}


def register_pilot(subparsers: Any) -> None:
    """Add ``mixer pilot``."""
    p = subparsers.add_parser("pilot", help=HELP["pilot"], description=HELP["pilot"])
    p.add_argument("--mesh", type=Path, required=True, help="the mesh directory")
    p.add_argument("--listen", type=hostport, default="127.0.0.1:15010",
                   help="the xDS gRPC address (default 127.0.0.1:15010)")
    p.add_argument("--admin", type=hostport, default="127.0.0.1:15014",
                   help="admin/debug HTTP address (default 127.0.0.1:15014)")
    p.add_argument("--ca-dir", type=Path, default=None,
                   help="the mesh CA (mixer ca init): xDS over mTLS, secrets over SDS")
    p.add_argument("--cert-ttl", default="24h", help="workload certificate lifetime")
    defaults = MixerServices()
    for flag, value in (("authz", defaults.authz), ("ratelimit", defaults.ratelimit),
                        ("telemetry", defaults.telemetry)):
        p.add_argument(f"--{flag}", type=_endpoint, default=value, metavar="HOST:PORT",
                       help=f"where the {flag} service listens (default {value})")
    p.add_argument("--tracing", type=_endpoint, default=None, metavar="HOST:PORT",
                   help="OTLP/gRPC collector (e.g. Jaeger :4317): every proxy traces to it "
                        "(default: no tracing)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="write the addresses into DIR/pilot.json")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_run_pilot)


def register_envoy_config(subparsers: Any) -> None:
    """Add ``mixer envoy-config-xds``."""
    b = subparsers.add_parser("envoy-config-xds", help=HELP["envoy-config-xds"],
                              description=HELP["envoy-config-xds"])
    b.add_argument("--xds", type=_endpoint, required=True, metavar="HOST:PORT")
    b.add_argument("--workload", required=True, metavar="NAME.NAMESPACE",
                   help="the WorkloadEntry this Envoy stands for")
    b.add_argument("--cert-dir", type=Path, default=None,
                   help="its bootstrap certificate (mixer ca issue --out)")
    b.add_argument("--mesh", type=Path, default=None,
                   help="read the workload's labels and role from the mesh directory")
    b.add_argument("--router", action="store_true", help="a gateway (without --mesh)")
    b.add_argument("--delta", action="store_true",
                   help="incremental xDS (DELTA_GRPC) instead of state of the world")
    b.add_argument("--admin", dest="admin_address", type=_endpoint,
                   default=Endpoint("127.0.0.1", 15000), metavar="HOST:PORT")
    b.add_argument("-o", "--output", type=Path, default=None)
    b.set_defaults(func=envoy_config_xds)


def register_proxy_status(subparsers: Any) -> None:
    """Add ``mixer proxy-status``."""
    s = subparsers.add_parser("proxy-status", help=HELP["proxy-status"],
                              description=HELP["proxy-status"])
    _where_flags(s)
    s.set_defaults(func=_proxy_status)


def register_proxy_config(subparsers: Any) -> None:
    """Add ``mixer proxy-config``."""
    c = subparsers.add_parser("proxy-config", help=HELP["proxy-config"],
                              description=HELP["proxy-config"])
    c.add_argument("kind", choices=sorted(KINDS))
    c.add_argument("proxy", help="NAME.NAMESPACE")
    _where_flags(c)
    c.set_defaults(func=_proxy_config)
