"""Domain access-log entries: what the servicer extracts from Envoy's protobuf entries.

Frozen, slotted and free of protobuf types, so labels, recorder, graph and access-log code can be
tested with plain values and benchmarked without gRPC. Times are Unix seconds, durations
milliseconds, absent strings ``""``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, str] = MappingProxyType({})


class TcpEvent(Enum):
    """Which moment of a TCP connection an entry reports (from ``access_log_type``)."""

    #: The upstream connection was established (``flush_access_log_on_connected``).
    OPEN = "open"
    #: Periodic report of a live connection (``access_log_flush_interval``).
    PERIODIC = "periodic"
    #: The connection ended.
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """One connection's TLS facts Envoy logs: the URI SANs of both certificates.

    An empty ``peer_uri`` under TLS means no peer certificate (yet: a TCP proxy's connect report
    can precede the end of the downstream handshake).
    """

    peer_uri: str = ""
    local_uri: str = ""


@dataclass(frozen=True, slots=True)
class HttpEntry:
    """One HTTP request as the reporting Envoy saw it."""

    upstream_cluster: str = ""
    route_name: str = ""
    start_time: float = 0.0
    duration_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    #: 0 when no response was sent (Istio's value too).
    response_code: int = 0
    response_code_details: str = ""
    #: Envoy's short response-flag codes joined by ``,``, or ``-``.
    response_flags: str = "-"
    method: str = ""
    scheme: str = ""
    authority: str = ""
    path: str = ""
    user_agent: str = ""
    request_id: str = ""
    protocol_version: str = ""
    downstream_remote_address: str = ""
    upstream_remote_address: str = ""
    request_headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    response_headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    response_trailers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    #: The downstream connection's TLS (Envoy's ``tls_properties``), None on plaintext.
    tls: TlsInfo | None = None
    #: The upstream connection's TLS (the upstream SAN custom tags), None when not logged.
    upstream_tls: TlsInfo | None = None
    #: Istio-style peer metadata from filter state (``downstream_peer``/``upstream_peer``).
    peer_state: Mapping[str, Any] | None = None
    #: gRPC message counts from the grpc_stats filter state, when logged.
    grpc_request_messages: int | None = None
    grpc_response_messages: int | None = None
    #: The upstream cluster's service (Istio's ``istio.services[0]`` cluster metadata, when
    #: the logger logs it): ``host`` and ``name``, ``""`` when absent.
    service_host: str = ""
    service_name: str = ""


@dataclass(frozen=True, slots=True)
class TcpEntry:
    """One TCP connection report (open, periodic or close)."""

    event: TcpEvent
    upstream_cluster: str = ""
    route_name: str = ""
    stream_id: str = ""
    start_time: float = 0.0
    duration_ms: float = 0.0
    #: Cumulative bytes received from / sent to the downstream so far on this connection.
    received_bytes: int = 0
    sent_bytes: int = 0
    response_flags: str = "-"
    downstream_remote_address: str = ""
    upstream_remote_address: str = ""
    tls: TlsInfo | None = None
    upstream_tls: TlsInfo | None = None
    peer_state: Mapping[str, Any] | None = None
    #: As on HttpEntry: the upstream cluster's service from its metadata, ``""`` when absent.
    service_host: str = ""
    service_name: str = ""


Entry = HttpEntry | TcpEntry
