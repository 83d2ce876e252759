"""The admin HTTP listener every service runs beside its gRPC port.

Routes: ``/metrics`` (Prometheus text from the service's own registry), ``/healthz`` (200 once
the first config has loaded and until shutdown starts, else 503), ``/config`` (the effective
config as JSON, plus the last load error if any). Services add their own routes (``/graph``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from envoy_mixer.common.snapshot import NotLoadedError


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, default=str, sort_keys=False),
        status=status,
        content_type="application/json",
    )


def build_admin_app(
    *,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    describe_config: Callable[[], Any],
    last_error: Callable[[], Any],
    routes: Sequence[web.RouteDef] = (),
    exposition: Callable[[CollectorRegistry], bytes] = generate_latest,
) -> web.Application:
    """An aiohttp application serving the shared admin routes plus ``routes``.

    ``exposition`` renders ``/metrics`` (telemetry keeps Istio's label order with its own).
    """

    async def metrics(_: web.Request) -> web.Response:
        body = exposition(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="OK\n")
        return web.Response(text="NOT READY\n", status=503)

    async def config(_: web.Request) -> web.Response:
        try:
            current = describe_config()
        except NotLoadedError:
            current = None  # before the first good load there is nothing to show but the error
        return _json({"config": current, "last_error": last_error()})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/config", config)
    app.add_routes(list(routes))
    return app
