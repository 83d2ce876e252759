"""Wiring: policy snapshot + reloader + JWKS cache + servicer -> a runnable ``Service``."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry

from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.runtime.reload import Reloader
from envoy_mixer.runtime.service import Service
from extauthz.jwt import Authenticator, JwksCache
from extauthz.metrics import AuthzMetrics
from extauthz.output_headers import DEFAULT_MAX_HEADERS_COUNT, DEFAULT_MAX_REQUEST_HEADERS_KB
from extauthz.policy import PolicySet, load_policies
from extauthz.server import SERVICE_NAME, AuthorizationServicer, add_to_server
from extauthz.trustdomain import TrustDomains


def build_service(
    policy: Path,
    *,
    default_namespace: str = "default",
    root_namespace: str = "istio-system",
    trusted_proxies: int = 0,
    jwks_refresh: float = 600.0,
    registry: CollectorRegistry | None = None,
    reload_interval: float = 0.5,
    trust_domains: TrustDomains | None = None,
    max_request_headers_kb: int = DEFAULT_MAX_REQUEST_HEADERS_KB,
    max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
) -> Service:
    """Everything ``envoy_mixer.runtime.service.run``/``start`` needs to serve ext_authz."""
    registry = registry or CollectorRegistry()
    metrics = AuthzMetrics(registry)
    snapshot: Snapshot[PolicySet] = Snapshot()
    cache = JwksCache(refresh=jwks_refresh, on_fetch=metrics.jwks_fetched)

    warming: set[asyncio.Task[object]] = set()

    def prefetch(policies: PolicySet) -> None:
        # Warm remote key sets right after a load so the first token does not wait for them.
        with contextlib.suppress(RuntimeError):  # no running loop (offline use): fetch lazily
            loop = asyncio.get_running_loop()
            for authn in policies.authentications:
                for rule in authn.rules:
                    if rule.jwks_uri and cache.peek(rule.jwks_uri) is None:
                        task = loop.create_task(cache.get(rule.jwks_uri, rule.timeout))
                        warming.add(task)
                        task.add_done_callback(warming.discard)

    reloader: Reloader[PolicySet] = Reloader(
        service="authz", paths=[policy],
        load=lambda: load_policies(policy, default_namespace=default_namespace,
                                   root_namespace=root_namespace,
                                   trust_domains=trust_domains),
        snapshot=snapshot, registry=registry, interval=reload_interval, on_swap=prefetch,
    )
    servicer = AuthorizationServicer(snapshot, metrics, Authenticator(cache),
                                     trusted_proxies=trusted_proxies,
                                     max_request_headers_kb=max_request_headers_kb,
                                     max_headers_count=max_headers_count)
    return Service(
        name="authz",
        grpc_services=[SERVICE_NAME],
        register=lambda server: add_to_server(servicer, server),
        registry=registry,
        reloader=reloader,
        describe=lambda: snapshot.get().describe() if snapshot.loaded else None,
    )
