"""Wiring: config snapshot + reloader + pipeline + servicer + admin routes -> a Service."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.service import Service
from telemetry.config import TelemetryConfig, default_config, load_config
from telemetry.exposition import render
from telemetry.pipeline import Pipeline
from telemetry.server import SERVICE_NAME, AccessLogServicer, add_to_server

#: How often idle series are expired and the access log flushed when nobody scrapes.
UPKEEP_INTERVAL_SECONDS = 5.0


@dataclass
class Telemetry:
    """The parts of a running telemetry service (tests and benchmarks reach into them)."""

    service: Service
    snapshot: Snapshot[TelemetryConfig]
    pipeline: Pipeline
    servicer: AccessLogServicer
    registry: CollectorRegistry


def build(config_path: Path | None, registry: CollectorRegistry | None = None) -> Telemetry:
    """Build the telemetry Service for ``config_path`` (None: built-in defaults)."""
    registry = registry or CollectorRegistry()
    snapshot: Snapshot[TelemetryConfig] = Snapshot()
    pipeline = Pipeline(default_config(), registry)
    servicer = AccessLogServicer(snapshot, pipeline, registry)
    reloader = Reloader(
        service="telemetry",
        paths=[config_path] if config_path is not None else [],
        load=lambda: load_config(config_path),
        snapshot=snapshot,
        registry=registry,
        on_swap=pipeline.configure,
    )

    async def graph(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(pipeline.graph.snapshot(), indent=2),
                            content_type="application/json")

    async def upkeep() -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL_SECONDS)
            pipeline.recorder.expire()
            pipeline.flush()

    async def close() -> None:
        servicer.process_pending()  # what was received before shutdown still counts
        pipeline.close()

    service = Service(
        name="telemetry",
        grpc_services=[SERVICE_NAME],
        register=lambda server: add_to_server(servicer, server),
        registry=registry,
        reloader=reloader,
        describe=lambda: snapshot.get().describe() if snapshot.loaded else None,
        routes=[web.get("/graph", graph)],
        tasks=[servicer.run_worker, upkeep],
        cleanup=[close],
        exposition=render,  # Istio's label order on /metrics, not prometheus_client's sorted one
    )
    return Telemetry(service, snapshot, pipeline, servicer, registry)
