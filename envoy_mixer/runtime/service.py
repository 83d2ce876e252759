"""Server lifecycle shared by the three services: gRPC + health + reflection + admin + reload.

A service package builds a ``Service`` (what to register, which registry, which reloader) and
hands it to ``run``. ``run`` installs uvloop, loads the config, starts the gRPC server (with
``grpc.health.v1`` and reflection) and the admin HTTP listener, watches the config files, and
on SIGTERM/SIGINT sets NOT_SERVING, drains for ``grace_seconds`` and returns exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, generate_latest

from envoy_mixer.common.logs import log_event
from envoy_mixer.runtime.admin import build_admin_app
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.settings import ServerSettings, split_hostport

_log = logging.getLogger("envoy_mixer.runtime.service")


@dataclass
class Service:
    """Everything the shared runtime needs to know about one service."""

    name: str
    #: Full gRPC service names served, for health status and reflection.
    grpc_services: Sequence[str]
    #: Adds the servicer(s) to the server.
    register: Callable[[grpc.aio.Server], None]
    registry: CollectorRegistry
    reloader: Reloader[Any] | None = None
    #: The effective config as JSON-able data, for ``/config``.
    describe: Callable[[], Any] = lambda: None
    routes: Sequence[web.RouteDef] = ()
    #: Long-running coroutines started with the server and cancelled at shutdown.
    tasks: Sequence[Callable[[], Awaitable[None]]] = ()
    #: Called once at shutdown after the gRPC server stopped (close pools, flush files).
    cleanup: Sequence[Callable[[], Awaitable[None]]] = ()
    #: Extra readiness condition (e.g. a backend connected); config loaded is always required.
    ready: Callable[[], bool] = lambda: True
    #: gRPC server options (e.g. max connection age for stream rebalancing).
    grpc_options: Sequence[tuple[str, Any]] = field(default_factory=list)
    #: Renders ``/metrics`` from ``registry`` (default: prometheus_client's text format).
    exposition: Callable[[CollectorRegistry], bytes] = generate_latest


@dataclass
class RunningService:
    """A started service: its bound ports and the handles needed to stop it."""

    service: Service
    server: grpc.aio.Server
    grpc_port: int
    admin_port: int
    health: health.aio.HealthServicer
    runner: web.AppRunner
    background: list[asyncio.Task[None]]
    stopping: bool = False

    def is_ready(self) -> bool:
        """Ready: config loaded, not shutting down, and the service's own condition holds."""
        reloader = self.service.reloader
        loaded = reloader is None or reloader.snapshot.loaded
        return loaded and not self.stopping and self.service.ready()

    async def set_serving(self) -> None:
        """Publish the current readiness on the gRPC health service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.is_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service.grpc_services):
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, drain in-flight calls for ``grace`` seconds, then release everything."""
        self.stopping = True
        await self.set_serving()
        log_event(_log, "shutdown_started", service=self.service.name, grace_seconds=grace)
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.stop(grace)
        await self.runner.cleanup()
        for hook in self.service.cleanup:
            await hook()
        log_event(_log, "shutdown_complete", service=self.service.name)


async def start(service: Service, settings: ServerSettings) -> RunningService:
    """Load config, bind gRPC and admin ports (port 0 = any free one) and start serving."""
    if service.reloader is not None:
        service.reloader.reload()

    server = grpc.aio.server(options=list(service.grpc_options))
    service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service.grpc_services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    host, port = split_hostport(settings.listen)
    grpc_port = server.add_insecure_port(f"{host}:{port}")
    if grpc_port == 0:
        raise OSError(f"cannot bind gRPC listener {settings.listen}")
    await server.start()

    running: RunningService  # the admin app needs the readiness closure below

    admin_app = build_admin_app(
        registry=service.registry,
        is_ready=lambda: running.is_ready(),
        describe_config=service.describe,
        last_error=lambda: (
            service.reloader.last_error.to_dict()
            if service.reloader is not None and service.reloader.last_error is not None
            else None
        ),
        routes=service.routes,
        exposition=service.exposition,
    )
    runner = web.AppRunner(admin_app, access_log=None)
    await runner.setup()
    admin_host, admin_port = split_hostport(settings.admin)
    site = web.TCPSite(runner, admin_host, admin_port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await server.stop(0)
        await runner.cleanup()
        raise
    bound_admin = admin_port
    sockets = getattr(site._server, "sockets", None)  # port 0 -> the port actually bound
    if sockets:
        bound_admin = int(sockets[0].getsockname()[1])

    background: list[asyncio.Task[None]] = []
    running = RunningService(
        service=service, server=server, grpc_port=grpc_port, admin_port=bound_admin,
        health=health_servicer, runner=runner, background=background,
    )
    await running.set_serving()

    async def refresh_health() -> None:
        # Health follows config and backend state (e.g. first good load after a bad start).
        while True:
            await asyncio.sleep(0.5)
            await running.set_serving()

    if service.reloader is not None:
        background.append(asyncio.create_task(service.reloader.watch()))
    background.append(asyncio.create_task(refresh_health()))
    background.extend(asyncio.create_task(_as_coro(t)) for t in service.tasks)
    log_event(
        _log, "service_started", service=service.name,
        grpc=f"{host}:{grpc_port}", admin=f"{admin_host}:{bound_admin}", ready=running.is_ready(),
    )
    return running


async def _as_coro(factory: Callable[[], Awaitable[None]]) -> None:
    await factory()


async def serve(service: Service, settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    try:
        running = await start(service, settings)
    except OSError as exc:
        log_event(_log, "bind_failed", logging.ERROR, service=service.name, error=str(exc))
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop(settings.grace_seconds)
    return 0


def run(build: Callable[[], Service], settings: ServerSettings) -> int:
    """Entry point of each ``__main__``: uvloop, build the service, serve, return exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.run(serve(build(), settings))

    async def main() -> int:
        return await serve(build(), settings)

    return uvloop.run(main())
