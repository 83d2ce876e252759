"""The ``mixer pilot`` process: mesh files -> snapshots -> ADS, with the admin/debug port.

:class:`Pilot` owns the pieces and can run in-process (tests, ``mixer up``):
``running = await Pilot(settings).start()`` binds the xDS and admin ports (port 0 = any),
writes ``<run-dir>/pilot.json`` when asked, and ``await running.stop()`` ends it.

- The mesh directory is loaded with the shared ``Reloader``: a bad edit keeps the last good
  mesh (logged with file, line and field, counted in ``mixer_config_load_errors_total``).
  It polls every ``debounce`` seconds and waits ``debounce`` again for an editor to finish,
  so an edit is live in well under a second.
- Every good load regenerates every proxy's snapshot; the cache pushes only the proxies (and
  types) whose content changed.
- With a CA (``--ca-dir``) the xDS port is TLS with a client certificate required, each
  stream is checked against the node's claimed workload, and each workload's certificate is
  issued here and reissued when half of its lifetime is gone (pushed over SDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from controlplane.ca.authority import IssuedCertificate
from controlplane.ca.identity import SpiffeId
from controlplane.ca.rotate import rotation_time
from controlplane.ca.store import load_ca
from controlplane.envoy.model import Endpoint, MixerServices
from controlplane.mesh import load_mesh
from controlplane.mesh.model import Mesh
from controlplane.pilot import Context, generate_all
from controlplane.pilot.generate import ProxyResources
from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.debug import debug_routes
from controlplane.xds.identity import NodeId, ServingCertificate, server_credentials
from controlplane.xds.server import AdsServer, XdsMetrics, register
from controlplane.xds.status import StatusBoard
from controlplane.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from envoy_mixer.common.logs import log_event
from envoy_mixer.common.snapshot import Snapshot as Current
from envoy_mixer.runtime.admin import build_admin_app
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.settings import split_hostport

__all__ = ["PILOT_FILE", "Pilot", "PilotSettings", "RunningPilot", "pilot_argv",
           "read_pilot_file", "to_snapshot"]

_log = logging.getLogger("controlplane.xds.app")
#: Where a run directory records the control plane's addresses.
PILOT_FILE = "pilot.json"
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PilotSettings:
    """How to run the control plane."""

    mesh: Path
    listen: str = "127.0.0.1:15010"
    admin: str = "127.0.0.1:15014"
    ca_dir: Path | None = None
    services: MixerServices = field(default_factory=MixerServices)
    debounce: float = 0.1
    cert_ttl: timedelta = timedelta(hours=24)
    run_dir: Path | None = None
    #: An OTLP/gRPC collector (``--tracing``): every generated HTTP listener traces to it.
    tracing: Endpoint | None = None


def to_snapshot(resources: ProxyResources) -> Snapshot:
    """A proxy's resources as a versioned snapshot."""
    return Snapshot.build({CLUSTER: resources.clusters, ENDPOINT: resources.endpoints,
                           LISTENER: resources.listeners, ROUTE: resources.routes,
                           SECRET: resources.secrets})


class Pilot:
    """The control plane's state: the mesh, the certificates, the cache and the status."""

    def __init__(self, settings: PilotSettings, *, registry: CollectorRegistry | None = None,
                 clock: Clock = _now) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.cache = SnapshotCache()
        self.status = StatusBoard()
        self.metrics = XdsMetrics(self.registry)
        self.ca = load_ca(settings.ca_dir) if settings.ca_dir is not None else None
        self.certificates: Mapping[str, IssuedCertificate] = MappingProxyType({})
        self.mesh: Current[Mesh] = Current()
        self.reloader: Reloader[Mesh] = Reloader(
            service="pilot", paths=[settings.mesh], load=lambda: load_mesh(settings.mesh),
            snapshot=self.mesh, registry=self.registry, interval=settings.debounce,
            settle=settings.debounce, on_swap=self._on_mesh)

    def _on_mesh(self, _mesh: Mesh) -> None:
        self.regenerate()

    def expected_identity(self, node: NodeId) -> SpiffeId | None:
        """The identity the mesh gives the workload ``node`` claims."""
        if self.ca is None or not self.mesh.loaded:
            return None
        for workload in self.mesh.get().workloads:
            if workload.name == node.name and workload.namespace == node.namespace:
                return SpiffeId(self.ca.trust_domain, workload.namespace,
                                workload.service_account or "default")
        return None

    def _refresh_certificates(self, mesh: Mesh) -> bool:
        """Issue missing certificates and reissue due ones; True if any changed."""
        if self.ca is None:
            return False
        now = self.clock()
        current = dict(self.certificates)
        changed = False
        wanted: dict[str, SpiffeId] = {
            f"{w.name}.{w.namespace}": SpiffeId(self.ca.trust_domain, w.namespace,
                                                w.service_account or "default")
            for w in mesh.workloads}
        for key, identity in wanted.items():
            issued = current.get(key)
            due = issued is None or now >= rotation_time(
                issued.certificate.not_valid_before_utc, issued.certificate.not_valid_after_utc)
            if due:
                current[key] = self.ca.issue(identity, now=now, ttl=self.settings.cert_ttl)
                changed = True
                log_event(_log, "workload_certificate_issued", proxy=key, identity=identity.uri,
                          serial=f"{current[key].certificate.serial_number:x}",
                          not_after=current[key].certificate.not_valid_after_utc.isoformat())
        for key in set(current) - set(wanted):
            del current[key]
            changed = True
        self.certificates = MappingProxyType(current)
        return changed

    def regenerate(self) -> tuple[str, ...]:
        """Rebuild every proxy's snapshot from the current mesh; push the changed ones."""
        mesh = self.mesh.get()
        self._refresh_certificates(mesh)
        context = Context(services=self.settings.services,
                          trust_domain=self.ca.trust_domain if self.ca else "cluster.local",
                          mtls=self.ca is not None, certificates=self.certificates,
                          tracing=self.settings.tracing)
        snapshots = {key: to_snapshot(r) for key, r in generate_all(mesh, context).items()}
        changed = self.cache.set_all(snapshots)
        log_event(_log, "pilot_snapshots_built", proxies=len(snapshots), changed=list(changed))
        return changed

    def next_rotation(self) -> datetime | None:
        """When the earliest certificate becomes due."""
        times = [rotation_time(c.certificate.not_valid_before_utc,
                               c.certificate.not_valid_after_utc)
                 for c in self.certificates.values()]
        return min(times, default=None)

    async def start(self) -> RunningPilot:
        """Load the mesh, bind the xDS and admin ports and start serving."""
        self.reloader.reload()
        server = grpc.aio.server()
        servicer = AdsServer(self.cache, self.status, self.metrics,
                             self.expected_identity if self.ca is not None else None)
        register(server, servicer)
        host, port = split_hostport(self.settings.listen)
        if self.ca is not None:
            serving = ServingCertificate(self.ca, clock=self.clock)
            bound = server.add_secure_port(f"{host}:{port}", server_credentials(serving))
        else:
            bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        app = build_admin_app(
            registry=self.registry, is_ready=lambda: self.mesh.loaded,
            describe_config=lambda: {"mesh": str(self.settings.mesh),
                                     "proxies": list(self.cache.proxies())},
            last_error=lambda: (self.reloader.last_error.to_dict()
                                if self.reloader.last_error else None),
            routes=debug_routes(self.cache, self.status, lambda: self.certificates),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        admin_host, admin_port = split_hostport(self.settings.admin)
        site = web.TCPSite(runner, admin_host, admin_port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        bound_admin = int(sockets[0].getsockname()[1]) if sockets else admin_port
        running = RunningPilot(self, server, runner, f"{host}:{bound}",
                               f"{admin_host}:{bound_admin}")
        running.tasks.append(asyncio.create_task(self.reloader.watch()))
        running.tasks.append(asyncio.create_task(self._rotate()))
        if self.settings.run_dir is not None:
            write_pilot_file(self.settings.run_dir, running)
        log_event(_log, "pilot_started", xds=running.xds, admin=running.admin,
                  tls=self.ca is not None, mesh=str(self.settings.mesh))
        return running

    async def _rotate(self) -> None:
        while True:
            due = self.next_rotation()
            wait = 60.0 if due is None else (due - self.clock()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.5), 60.0))
            if self.mesh.loaded and self._refresh_certificates(self.mesh.get()):
                self.regenerate()


@dataclass
class RunningPilot:
    """A started control plane."""

    pilot: Pilot
    server: grpc.aio.Server
    runner: web.AppRunner
    xds: str
    admin: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float = 0.5) -> None:
        """Stop serving (open streams are cancelled; Envoys keep their config)."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.stop(grace)
        await self.runner.cleanup()


def pilot_argv(settings: PilotSettings) -> list[str]:
    """``mixer pilot`` arguments running ``settings`` as a subprocess (for ``mixer up``:
    ``procs.mixer_process(pilot_argv(s), admin_port, log)``, which waits for ``/healthz``)."""
    services = settings.services
    argv = ["pilot", "--mesh", str(settings.mesh), "--listen", settings.listen,
            "--admin", settings.admin, "--authz", str(services.authz),
            "--ratelimit", str(services.ratelimit), "--telemetry", str(services.telemetry),
            "--cert-ttl", f"{int(settings.cert_ttl.total_seconds())}s"]
    if settings.ca_dir is not None:
        argv += ["--ca-dir", str(settings.ca_dir)]
    if settings.run_dir is not None:
        argv += ["--run-dir", str(settings.run_dir)]
    if settings.tracing is not None:
        argv += ["--tracing", str(settings.tracing)]
    return argv


def write_pilot_file(run_dir: Path, running: RunningPilot) -> Path:
    """Record where the control plane listens: ``<run_dir>/pilot.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PILOT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"xds": running.xds, "admin": running.admin, "pid": os.getpid(),
                               "tls": running.pilot.ca is not None}) + "\n")
    os.replace(tmp, path)
    return path


def read_pilot_file(run_dir: Path) -> dict[str, str]:
    """The addresses a run directory records (OSError/ValueError if there are none)."""
    data = json.loads((run_dir / PILOT_FILE).read_text())
    if not isinstance(data, dict) or "admin" not in data:
        raise ValueError(f"{run_dir / PILOT_FILE}: no control plane address")
    return {k: str(v) for k, v in data.items()}
