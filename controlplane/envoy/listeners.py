"""Listeners: one TCP listener per role direction, each with an HTTP connection manager.

The connection manager normalizes paths before any filter sees them and sets every timeout
explicitly; tracing (OpenTelemetry over OTLP/gRPC) is added only when a collector is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
)

from controlplane.envoy.core import duration, envoy_grpc, pack, socket_address
from controlplane.envoy.model import TRACING_CLUSTER

HCM = "envoy.filters.network.http_connection_manager"
OPENTELEMETRY = "envoy.tracers.opentelemetry"
Tracing: TypeAlias = HttpConnectionManager.Tracing


def http_connection_manager(
    *, stat_prefix: str, route_config: RouteConfiguration, http_filters: Sequence[HttpFilter],
    access_logs: Sequence[AccessLog], edge: bool, tracing: Tracing | None = None,
) -> HttpConnectionManager:
    """An HTTP connection manager with path normalization and explicit timeouts.

    ``edge`` (``use_remote_address``) trusts the connection's peer as the client, so rate
    limits on ``remote_address`` see the real client at the mesh's front door.
    """
    hcm = HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=HttpConnectionManager.AUTO,
        route_config=route_config,
        http_filters=http_filters,
        access_log=access_logs,
        # Normalize before any policy sees the path: /a/../admin, //admin and %2F tricks
        # must not slip past path rules.
        normalize_path={"value": True},
        merge_slashes=True,
        path_with_escaped_slashes_action=HttpConnectionManager.UNESCAPE_AND_REDIRECT,
        use_remote_address={"value": edge},
        request_timeout=duration("30s"),
        stream_idle_timeout=duration("60s"),
        common_http_protocol_options={"idle_timeout": duration("300s")},
    )
    if tracing is not None:
        hcm.tracing.CopyFrom(tracing)
    return hcm


def tracing_config(service_name: str) -> Tracing:
    """HCM tracing via OpenTelemetry (OTLP/gRPC) to the tracing collector, every request."""
    tracing = Tracing(random_sampling={"value": 100})
    tracing.provider.name = OPENTELEMETRY
    tracing.provider.typed_config.CopyFrom(pack(OpenTelemetryConfig(
        grpc_service=envoy_grpc(TRACING_CLUSTER, "0.25s"), service_name=service_name,
    )))
    return tracing


def listener(name: str, host: str, port: int, hcm: HttpConnectionManager) -> Listener:
    """A TCP listener with one filter chain holding ``hcm``."""
    out = Listener(name=name, address=socket_address(host, port))
    chain = out.filter_chains.add()
    chain.filters.add(name=HCM).typed_config.CopyFrom(pack(hcm))
    return out
