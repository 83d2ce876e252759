"""Listeners: one TCP listener per role direction, each with an HTTP connection manager.

The connection manager normalizes paths before any filter sees them and sets every timeout
explicitly; tracing (OpenTelemetry over OTLP/gRPC) is added only when a collector is given.

A mesh inbound listener follows its PeerAuthentication mode (:func:`inbound_listener`):
STRICT has one mTLS chain; PERMISSIVE a ``tls_inspector`` and two chains, mTLS for clients
offering Istio's ALPN and plaintext for ``raw_buffer`` (without the inspector Envoy silently
sends every connection down the plaintext chain), and, given a TCP proxy to the app, Istio's
third chain passing the app's own TLS (TLS without Istio's ALPN) through untouched; DISABLE
one plaintext chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog
from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from google.protobuf.message import Message

from controlplane.envoy.core import duration, envoy_grpc, pack, socket_address
from controlplane.envoy.model import TRACING_CLUSTER, InboundMode
from controlplane.envoy.tls import MESH_ALPNS

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
OPENTELEMETRY = "envoy.tracers.opentelemetry"
Tracing: TypeAlias = HttpConnectionManager.Tracing


def http_connection_manager(
    *, stat_prefix: str, route_config: RouteConfiguration, http_filters: Sequence[HttpFilter],
    access_logs: Sequence[AccessLog], edge: bool, tracing: Tracing | None = None,
    client_cert: bool = False,
) -> HttpConnectionManager:
    """An HTTP connection manager with path normalization and explicit timeouts.

    ``edge`` (``use_remote_address``) trusts the connection's peer as the client, so rate
    limits on ``remote_address`` see the real client at the mesh's front door.
    ``client_cert`` (an mTLS chain) replaces any ``x-forwarded-client-cert`` with the verified
    peer's, as Istio's sidecars hand it to the app; elsewhere Envoy's default removes it.
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
    if client_cert:
        hcm.forward_client_cert_details = HttpConnectionManager.SANITIZE_SET
        hcm.set_current_client_cert_details.uri = True
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


def listener(name: str, host: str, port: int, config: Message) -> Listener:
    """A TCP listener with one filter chain holding ``config`` (an HCM or a TCP proxy)."""
    out = Listener(name=name, address=socket_address(host, port))
    chain = out.filter_chains.add()
    chain.filters.add(name=network_filter_name(config)).typed_config.CopyFrom(pack(config))
    return out


def network_filter_name(config: Message) -> str:
    """The filter name of a network filter config (an HCM or a TCP proxy)."""
    return HCM if isinstance(config, HttpConnectionManager) else TCP_PROXY


def inbound_listener(
    name: str, host: str, port: int, mode: InboundMode, *, mtls: Message,
    plaintext: Message, server_tls: TransportSocket | None,
    passthrough: TcpProxy | None = None,
) -> Listener:
    """A listener admitting peers as ``mode`` says; ``mtls``/``plaintext`` are each chain's
    network filter (an HCM or a TCP proxy).

    ``server_tls`` (required unless DISABLE) is the DownstreamTlsContext socket.
    ``passthrough`` (PERMISSIVE only) takes TLS that offers none of Istio's ALPNs, i.e. a
    client speaking TLS to an app that terminates it itself (Istio's passthrough chain):
    without it Envoy resets such a connection (``no_filter_chain_match``).
    """
    out = Listener(name=name, address=socket_address(host, port))

    def chain(chain_name: str, config: Message) -> FilterChain:
        added = out.filter_chains.add(name=chain_name)
        added.filters.add(name=network_filter_name(config)).typed_config.CopyFrom(pack(config))
        return added

    if mode == "DISABLE":
        chain("plaintext", plaintext)
        return out
    if server_tls is None:
        raise ValueError(f"{mode} needs a certificate (server_tls)")
    if mode == "PERMISSIVE":
        # Without the inspector Envoy cannot tell TLS from plaintext and silently takes the
        # raw_buffer chain for everything.
        out.listener_filters.add(name=TLS_INSPECTOR).typed_config.CopyFrom(pack(TlsInspector()))
    secured = chain("mtls", mtls)
    secured.transport_socket.CopyFrom(server_tls)
    if mode == "PERMISSIVE":
        secured.filter_chain_match.transport_protocol = "tls"
        secured.filter_chain_match.application_protocols.extend(MESH_ALPNS)
        chain("plaintext", plaintext).filter_chain_match.transport_protocol = "raw_buffer"
        if passthrough is not None:
            # Envoy prefers the chain naming an ALPN, so this one gets only TLS without
            # Istio's: no transport socket, the bytes go to the app as they came.
            chain("tls-passthrough", passthrough).filter_chain_match.transport_protocol = "tls"
    return out
