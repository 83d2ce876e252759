"""``mixer up``: a whole local mesh from one command, no Docker, no Redis.

It runs the demo mesh through the control plane (:mod:`envoy_mixer.dev.meshup`):
``examples/mesh`` (Istio's files for ingress gateway -> frontend -> backend and an egress
gateway, with the policy, limits and telemetry files beside them) is served by ``mixer pilot``,
the three services read the same files, one Envoy per WorkloadEntry starts from a minimal
bootstrap, and the two demo apps run behind their sidecars. ``--mesh DIR`` runs a user's mesh
the same way, without the demo apps. Every edit of the mesh (routes, policies, limits, mTLS)
applies live with no Envoy restart. Outside a source checkout the examples are an editable copy
of the packaged ones, see ``find_examples``. Static Envoy configs stay available through
``mixer envoy-config``.

Then it prints what runs where and three curl commands (allowed, denied by policy, rate
limited). ``--check`` runs those three requests, asserts 200/403/429 and exits 0 or 1.
Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from envoy_mixer.dev.errors import UpError

if TYPE_CHECKING:
    from controlplane.envoy.mesh import Mesh

__all__ = ["EXAMPLE_FILES", "MESH_DIR", "Response", "UpError", "check_at", "curls_at",
           "find_examples", "http_get", "install_examples", "main", "mesh_ports", "register",
           "run_up", "user_examples_dir"]

#: The top-level example files (the services' and compose's; ``mixer envoy-config`` reads the
#: limits and PeerAuthentication ones). ``mixer up`` serves the copies in ``mesh/``.
EXAMPLE_FILES = {"authz": "policy.yaml", "ratelimit": "ratelimit.yaml",
                 "telemetry": "telemetry.yaml", "peerauthn": "peer-authentication.yaml"}
#: The demo mesh directory inside an examples directory (``examples/mesh``).
MESH_DIR = "mesh"

#: The three demo requests: (label, path, expected status).
ALLOWED_PATH = "/api/hello"
DENIED_PATH = "/admin/users"
LIMITED_PATH = "/api/limited"


def user_examples_dir() -> Path:
    """Where ``mixer up`` keeps its editable copy of the packaged examples.

    ``$XDG_CONFIG_HOME/envoy-mixer/examples`` (default ``~/.config/envoy-mixer/examples``): one
    place per user, so edits survive whichever directory ``mixer up`` is run from.
    """
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path.home() / ".config")
        except RuntimeError:  # no HOME and no passwd entry
            raise UpError("cannot find your home directory; pass --examples DIR") from None
    return Path(base) / "envoy-mixer" / "examples"


def install_examples(target: Path) -> list[str]:
    """Copy the packaged example files that ``target`` lacks into it; return the names copied.

    A file already in ``target`` is never overwritten: it may hold the user's edits.
    """
    packaged = resources.files("envoy_mixer.dev") / "examples"
    copied: list[str] = []
    names = [*EXAMPLE_FILES.values(), *(f"{MESH_DIR}/{p.name}" for p in sorted(
        (packaged / MESH_DIR).iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml"))]
    try:
        (target / MESH_DIR).mkdir(parents=True, exist_ok=True)
        for name in names:
            data = (packaged / name).read_bytes()
            try:
                # "x": create only, so a file appearing meanwhile is not clobbered either.
                with (target / name).open("xb") as f:
                    f.write(data)
            except FileExistsError:
                continue
            copied.append(name)
    except OSError as exc:
        raise UpError(f"cannot copy the example files to {target}: {exc}; "
                      "pass --examples DIR") from None
    return copied


def _has_examples(path: Path) -> bool:
    return any((path / MESH_DIR).glob("*.yaml"))


def find_examples(
    explicit: Path | None, *, cwd: Path | None = None, user_dir: Path | None = None,
    out: TextIO | None = None,
) -> Path:
    """The examples directory whose ``mesh/`` is the demo mesh ``mixer up`` serves.

    ``--examples DIR`` if given (it must hold ``mesh/*.yaml``); else ``./examples`` when it
    does (a source checkout); else ``user_dir`` (default ``user_examples_dir()``), filled from
    the examples packaged with envoy-mixer on first use. Which one was picked, and whether
    files were copied, is said on ``out``.
    """
    if explicit is not None:
        if _has_examples(explicit):
            return explicit
        raise UpError(f"no demo mesh ({MESH_DIR}/*.yaml) in {explicit}; pass --examples DIR "
                      "(or run your own mesh with --mesh DIR)")
    local = (cwd or Path.cwd()) / "examples"
    if _has_examples(local):
        return local
    target = user_dir or user_examples_dir()
    copied = install_examples(target)
    if out is not None:
        if copied:
            print(f"copied the example files ({', '.join(copied)}) to {target}: edit them "
                  "there, they hot-reload", file=out, flush=True)
        else:
            print(f"using the example files in {target}", file=out, flush=True)
    return target


def mesh_ports(mesh: Mesh, admin_ports: dict[str, int],
               pilot: tuple[int, int] | None = None) -> dict[int, str]:
    """Every port of the demo layout, with who uses it (``pilot``: the control plane's xDS
    and admin ports): what a free port base must leave free."""
    ports = {
        mesh.ingress.port: "ingress gateway", mesh.ingress_admin.port: "ingress gateway admin",
        mesh.egress.port: "egress gateway", mesh.egress_admin.port: "egress gateway admin",
        mesh.services.authz.port: "authz gRPC", mesh.services.ratelimit.port: "ratelimit gRPC",
        mesh.services.telemetry.port: "telemetry gRPC",
    }
    for name, ports_of in (("frontend", mesh.frontend), ("backend", mesh.backend)):
        ports[ports_of.app.port] = f"{name} app"
        ports[ports_of.inbound.port] = f"{name} sidecar inbound"
        ports[ports_of.admin.port] = f"{name} sidecar admin"
    ports[mesh.frontend.outbound.port] = "frontend sidecar outbound"
    for service, port in admin_ports.items():
        ports[port] = f"{service} admin"
    if pilot is not None:
        ports[pilot[0]], ports[pilot[1]] = "pilot xDS", "pilot admin"
    return ports


# ---------------------------------------------------------------------------- user output

def curls_at(url: str) -> list[tuple[str, str]]:
    """The three demo commands against the ingress gateway at ``url``."""
    return [
        ("allowed (200): ingress -> frontend -> backend",
         f"curl -i {url}{ALLOWED_PATH}"),
        ("denied by policy (403): backend's DENY on /admin/*",
         f"curl -i {url}{DENIED_PATH}"),
        ("rate limited (429 after 3 per minute)",
         f"for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}}\\n' "
         f"{url}{LIMITED_PATH}; done"),
    ]


# ---------------------------------------------------------------------------- --check

@dataclass(frozen=True, slots=True)
class Response:
    """Status, headers (lower-cased) and body text of one HTTP response."""

    status: int
    headers: dict[str, str]
    body: str


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> Response:
    """GET without raising on 4xx/5xx (and without any proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                            resp.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()},
                        exc.read().decode(errors="replace"))


def check_at(url: str, out: TextIO, attempts: int = 10) -> bool:
    """The three demo requests against the ingress gateway at ``url``; True when all pass."""
    ok = True

    def report(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", file=out)

    allowed = http_get(url + ALLOWED_PATH)
    report("allowed", allowed.status == 200 and '"backend"' in allowed.body,
           f"GET {ALLOWED_PATH} -> {allowed.status} (want 200 from backend)")
    denied = http_get(url + DENIED_PATH)
    report("denied", denied.status == 403,
           f"GET {DENIED_PATH} -> {denied.status} (want 403 by policy)")
    statuses: list[int] = []
    limited: Response | None = None
    for _ in range(attempts):
        resp = http_get(url + LIMITED_PATH)
        statuses.append(resp.status)
        if resp.status == 429:
            limited = resp
            break
        if resp.status != 200:
            break
    report("rate-limited",
           limited is not None and limited.headers.get("x-envoy-ratelimited") == "true",
           f"GET {LIMITED_PATH} x{len(statuses)} -> {statuses} (want 200s then 429)")
    return ok


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGINT raise KeyboardInterrupt: Ctrl-C and ``kill`` share one clean-up."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and `kill -INT` must
    # still stop the mesh.
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def register(subparsers: Any) -> None:
    """Add ``mixer up``."""
    p = subparsers.add_parser(
        "up", help="start a local demo mesh (Envoys, demo apps, the three services)",
        description="Start a local mesh on the control plane: mixer pilot serving the "
                    "demo mesh (ingress gateway, frontend and backend behind sidecars, an "
                    "egress gateway) or your own (--mesh DIR), the authz, ratelimit and "
                    "telemetry services, and one Envoy per WorkloadEntry. Edits of the mesh "
                    "files apply live.",
    )
    p.add_argument("--mesh", type=Path, default=None, metavar="DIR",
                   help="run your own mesh (Istio's files, policies, limits, telemetry): the "
                        "control plane, the services and one Envoy per WorkloadEntry; your "
                        "apps are not started")
    p.add_argument("--examples", type=Path, default=None, metavar="DIR",
                   help="where the demo mesh is (DIR/mesh) (default: ./examples, else an "
                        "editable copy of the packaged examples in "
                        "~/.config/envoy-mixer/examples)")
    p.add_argument("--port-base", type=int, default=None, metavar="N",
                   help="move every port to N+offset: the mesh files' bound ports 8080-8119 "
                        "(in a copy in the run dir), the services' (N+40..45) and the control "
                        "plane's (N+46, N+47) (default: as in the files, services on their "
                        "usual ports, the control plane on 15010/15014)")
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="count rate limits in Redis instead of memory")
    p.add_argument("--run-dir", type=Path, default=Path(".mixer-run"), metavar="DIR",
                   help="where bootstraps, certificates, logs, pilot.json and pids.json go "
                        "(default .mixer-run)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the mesh to become healthy (default 30)")
    p.add_argument("--check", action="store_true",
                   help="bring the mesh up, run the three demo requests, assert, exit "
                        "(with --mesh: exit once every Envoy is ready)")
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Handler of ``mixer up``: the demo mesh, or ``--mesh DIR``, on the control plane."""
    # Imported here, not at the top: `mixer up --help` must not load the control plane.
    from envoy_mixer.dev import meshup

    started = time.monotonic()
    with _terminate_on_sigterm():
        try:
            if args.mesh is not None:
                mesh_dir, demo = args.mesh, False
                if not mesh_dir.is_dir():
                    raise UpError(f"no mesh directory {mesh_dir}")
            else:
                mesh_dir, demo = find_examples(args.examples, out=out) / MESH_DIR, True
            run = meshup.start(mesh_dir=mesh_dir, run_dir=args.run_dir, demo=demo,
                               port_base=args.port_base, redis_url=args.redis_url,
                               timeout=args.timeout, on_event=meshup.print_event(out))
        except UpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        try:
            curls = curls_at(run.ingress_url) if demo else []
            print(meshup.describe(run, curls), file=out)
            print(f"\n(healthy after {time.monotonic() - started:.1f}s)", file=out, flush=True)
            if args.check:
                if not demo:
                    print(f"PASS ready: {len(run.proxies)} Envoys served by the control plane",
                          file=out)
                    return 0
                return 0 if check_at(run.ingress_url, out) else 1
            return meshup.watch(run)
        except KeyboardInterrupt:
            print("\nstopping...", file=out)
            return 0
        finally:
            run.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m envoy_mixer.dev.up``: same as ``mixer up``."""
    parser = argparse.ArgumentParser(prog="mixer")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["up", *(argv if argv is not None else sys.argv[1:])])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
