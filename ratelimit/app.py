"""Wiring: settings -> config reloader + backend + limiter + servicer -> a runnable Service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.service import Service
from envoy_mixer.runtime.settings import SettingError
from ratelimit.backends import Backend, create_backend
from ratelimit.config import DescriptorNode, RateLimitConfig, load_config
from ratelimit.limiter import Limiter, LimiterSettings
from ratelimit.metrics import RateLimitMetrics
from ratelimit.server import SERVICE_NAME, RateLimitServicer, decide_json, register


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Everything ``mixer ratelimit`` is configured with besides addresses and logging."""

    config: Path
    backend: str = "memory"
    redis_url: str | None = None
    redis_mode: str = "single"
    redis_timeout: float = 0.25
    redis_pool_size: int = 4
    redis_prefix: str = "mixer:rl:"
    #: A second Redis for per-second limits (the reference's REDIS_PERSECOND_*).
    per_second_url: str | None = None
    per_second_mode: str = "single"
    per_second_pool_size: int = 4
    #: EXPIRATION_JITTER_MAX_SECONDS: up to this many extra seconds on each key's expiry.
    expiration_jitter: int = 0
    #: MERGE_DOMAIN_CONFIG: one domain may span several files.
    merge_domains: bool = False
    reload_interval: float = 0.5
    limiter: LimiterSettings = field(default_factory=LimiterSettings)


@dataclass
class RateLimitApp:
    """The built pieces, kept together so tests can reach them."""

    service: Service
    servicer: RateLimitServicer
    backend: Backend
    snapshot: Snapshot[RateLimitConfig]
    reloader: Reloader[RateLimitConfig]
    metrics: RateLimitMetrics
    registry: CollectorRegistry


def build(settings: RateLimitSettings, registry: CollectorRegistry | None = None) -> RateLimitApp:
    """Build the service (nothing starts until ``envoy_mixer.runtime.serve.serve``/``start``).

    Raises ``SettingError`` for a backend setting (Redis URL, mode, TLS option) it cannot use.
    """
    registry = registry or CollectorRegistry()
    metrics = RateLimitMetrics(registry)
    snapshot: Snapshot[RateLimitConfig] = Snapshot()

    def load() -> RateLimitConfig:
        try:
            config = load_config(settings.config, merge_domains=settings.merge_domains)
        except ConfigError:
            metrics.config_load_error.inc()
            raise
        metrics.config_load_success.inc()
        return config

    reloader = Reloader(
        service="ratelimit", paths=[settings.config], load=load, snapshot=snapshot,
        registry=registry, interval=settings.reload_interval,
    )
    try:
        backend = create_backend(
            settings.backend, redis_url=settings.redis_url, redis_mode=settings.redis_mode,
            redis_timeout=settings.redis_timeout, redis_pool_size=settings.redis_pool_size,
            redis_prefix=settings.redis_prefix, expiration_jitter=settings.expiration_jitter,
            per_second_url=settings.per_second_url, per_second_mode=settings.per_second_mode,
            per_second_pool_size=settings.per_second_pool_size,
        )
    except ValueError as exc:
        # A URL, mode or TLS option the backend rejects is a bad setting: serve() prints one
        # line and exits 2. Only the backend's construction is covered, not its use.
        raise SettingError(str(exc)) from exc
    servicer = RateLimitServicer(Limiter(backend, settings.limiter), snapshot, metrics)

    def describe() -> dict[str, Any]:
        return {
            "backend": backend.name,
            "redis": getattr(backend, "url", None),
            "redis_per_second": getattr(backend, "per_second_url", None),
            "settings": {
                "shadow_mode": settings.limiter.shadow_mode,
                "near_limit_ratio": settings.limiter.near_limit_ratio,
                "local_cache": settings.limiter.local_cache,
                "response_headers": settings.limiter.response_headers,
                "redis_timeout": settings.redis_timeout,
                "redis_prefix": settings.redis_prefix,
                "quota_mode": settings.limiter.quota_mode,
                "stop_increment_when_over_limit":
                    settings.limiter.stop_increment_when_over_limit,
                "response_dynamic_metadata": settings.limiter.response_dynamic_metadata,
                "merge_domains": settings.merge_domains,
                "expiration_jitter": settings.expiration_jitter,
            },
            "domains": snapshot.get().describe() if snapshot.loaded else None,
        }

    async def rlconfig(_: web.Request) -> web.Response:
        # One line per limit, like envoyproxy/ratelimit's debug page.
        lines: list[str] = []

        def walk(domain: str, nodes: tuple[DescriptorNode, ...]) -> None:
            for node in nodes:
                for lim in node.limits:
                    text = "unlimited" if lim.unlimited else (
                        f"unit={lim.unit.upper()} requests_per_unit={lim.requests_per_unit}"
                        f", algorithm={lim.algorithm.value}"
                    )
                    lines.append(f"{domain}.{node.stats_key}: {text}, "
                                 f"shadow_mode: {str(node.shadow_mode).lower()}")
                walk(domain, node.ordered_children)

        if snapshot.loaded:
            for dom in snapshot.get().by_domain.values():
                walk(dom.name, dom.ordered)
        return web.Response(text="\n".join(lines) + "\n")

    async def json_endpoint(request: web.Request) -> web.Response:
        status, text = await decide_json(servicer, await request.read())
        return web.Response(status=status, text=text, content_type="application/json")

    async def watch_backend() -> None:
        # Readiness follows the backend; while it is down, probe so health recovers on its own.
        ping = getattr(backend, "ping", None)
        if ping is not None:
            await ping(5.0)
        while ping is not None:
            await asyncio.sleep(1.0)
            if not backend.healthy():
                await ping()

    def register_servicer(server: grpc.aio.Server) -> None:
        register(server, servicer)

    service = Service(
        name="ratelimit",
        grpc_services=[SERVICE_NAME],
        register=register_servicer,
        registry=registry,
        reloader=reloader,
        describe=describe,
        routes=[web.get("/rlconfig", rlconfig), web.post("/json", json_endpoint)],
        tasks=[watch_backend],
        cleanup=[backend.close],
        ready=backend.healthy,
    )
    return RateLimitApp(service, servicer, backend, snapshot, reloader, metrics, registry)
