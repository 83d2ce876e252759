"""The ``AccessLogService/StreamAccessLogs`` servicer: protobuf in, domain entries out.

Reading a stream never waits on processing: each message's batch goes onto a bounded backlog
(dropped and counted when full: ALS is fire-and-forget and Envoy would otherwise start dropping
on its side) and one worker task turns batches into domain entries and feeds the pipeline. The
node identity arrives only in a stream's first message, so it is kept per stream. Streams older
than ``max_stream_age_seconds`` are ended (OK), so Envoy reconnects and a new replica behind a
load balancer gets its share.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import json_format, struct_pb2
from prometheus_client import CollectorRegistry, Gauge

from envoy_mixer.common.logs import log_event
from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.runtime.metrics import Counter
from telemetry.config import TelemetryConfig
from telemetry.entries import HttpEntry, TcpEntry, TcpEvent, TlsInfo
from telemetry.identity import (
    PEER_STASH_NAMESPACE,
    SERVICES_TAG,
    UNKNOWN_NODE,
    UPSTREAM_LOCAL_SAN_TAG,
    UPSTREAM_PEER_SAN_TAG,
    NodeIdentity,
    node_identity,
)
from telemetry.labels import short_flags
from telemetry.pipeline import Pipeline

SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"
_log = logging.getLogger("telemetry.server")

_METHOD_NAMES = {
    v.number: ("" if v.name == "METHOD_UNSPECIFIED" else v.name)
    for v in accesslog_pb2.HTTPRequestProperties.DESCRIPTOR.fields_by_name[
        "request_method"].enum_type.values
}
_HTTP_VERSIONS = {v.number: v.name for v in
                  accesslog_pb2.HTTPAccessLogEntry.HTTPVersion.DESCRIPTOR.values}
_TCP_EVENTS = {
    accesslog_pb2.TcpUpstreamConnected: TcpEvent.OPEN,
    accesslog_pb2.TcpPeriodic: TcpEvent.PERIODIC,
}
_EXTERNAL_SERVICE = accesslog_pb2.ResponseFlags.Unauthorized.EXTERNAL_SERVICE
_GRPC_STATS_KEY = "envoy.filters.http.grpc_stats"
_PEER_KEYS = ("downstream_peer", "upstream_peer")


# ----------------------------------------------------------------------------- protobuf -> domain


def _address(addr: address_pb2.Address) -> str:
    sock = addr.socket_address
    if sock.address:
        return f"{sock.address}:{sock.port_value}"
    return str(addr.pipe.path)


def _ms(duration: Any) -> float:
    return float(duration.seconds * 1000 + duration.nanos / 1_000_000)


def _flags(flags: accesslog_pb2.ResponseFlags) -> str:
    names = []
    for fd, value in flags.ListFields():
        if fd.name == "unauthorized_details":
            if value.reason == _EXTERNAL_SERVICE:
                names.append(fd.name)
        else:
            names.append(fd.name)
    return short_flags(names)


def _tls(common: accesslog_pb2.AccessLogCommon) -> TlsInfo | None:
    if not common.HasField("tls_properties"):
        return None
    tls = common.tls_properties

    def uri(props: Any) -> str:
        for san in props.subject_alt_name:
            if san.uri:
                return str(san.uri)
        return ""

    return TlsInfo(peer_uri=uri(tls.peer_certificate_properties),
                   local_uri=uri(tls.local_certificate_properties))


def _upstream_tls(common: accesslog_pb2.AccessLogCommon) -> TlsInfo | None:
    """The upstream connection's URI SANs from the upstream SAN custom tags, when logged.

    ALS's ``tls_properties`` describe the downstream connection only; Envoy's formatter knows
    the upstream certificates, so the logger copies them into custom tags. Envoy writes ``-``
    or nothing for a value it does not have (plaintext upstream, no connection).
    """
    tags = common.custom_tags
    if not tags:
        return None
    peer = tags.get(UPSTREAM_PEER_SAN_TAG, "")
    local = tags.get(UPSTREAM_LOCAL_SAN_TAG, "")
    peer = "" if peer == "-" else peer
    local = "" if local == "-" else local
    if not peer and not local:
        return None
    # A certificate can carry several URI SANs; Envoy joins them with ",", Istio uses the first.
    return TlsInfo(peer_uri=peer.split(",", 1)[0], local_uri=local.split(",", 1)[0])


def _filter_state(common: accesslog_pb2.AccessLogCommon) -> tuple[
        dict[str, Any] | None, tuple[int, int] | None]:
    objects = common.filter_state_objects
    if not objects:
        return None, None
    peer = None
    for key in _PEER_KEYS:
        if key in objects:
            struct = struct_pb2.Struct()
            if objects[key].Unpack(struct):
                peer = json_format.MessageToDict(struct)
                break
    grpc_counts = None
    if _GRPC_STATS_KEY in objects:
        stats = grpc_stats_pb2.FilterObject()
        if objects[_GRPC_STATS_KEY].Unpack(stats):
            grpc_counts = (stats.request_message_count, stats.response_message_count)
    return peer, grpc_counts


def _cluster_service(common: accesslog_pb2.AccessLogCommon) -> tuple[str, str]:
    """``(host, name)`` of ``istio.services[0]`` from the ``istio.services`` custom tag.

    Envoy renders the cluster's metadata list as JSON; anything else (tag absent, not
    configured, not a list of mappings) means the cluster names no service.
    """
    text = common.custom_tags.get(SERVICES_TAG)
    if not text:
        return "", ""
    try:
        services = json.loads(text)
    except ValueError:
        return "", ""
    if not isinstance(services, list) or not services or not isinstance(services[0], dict):
        return "", ""
    first = services[0]
    host, name = first.get("host"), first.get("name")
    return (host if isinstance(host, str) else "", name if isinstance(name, str) else "")


def _response_headers(common: Any, response: Any) -> dict[str, str]:
    """Logged response headers, plus the peer headers the proxy stripped into metadata."""
    headers = dict(response.response_headers)
    stash = common.metadata.filter_metadata.get(PEER_STASH_NAMESPACE)
    if stash is not None:
        for key, value in stash.fields.items():
            headers.setdefault(key, value.string_value)
    return headers


def http_entry(pb: accesslog_pb2.HTTPAccessLogEntry) -> HttpEntry:
    """Map Envoy's HTTP entry to the domain entry."""
    common = pb.common_properties
    request = pb.request
    response = pb.response
    duration = _ms(common.duration) or _ms(common.time_to_last_downstream_tx_byte)
    start = common.start_time
    peer, grpc_counts = _filter_state(common)
    service_host, service_name = _cluster_service(common)
    return HttpEntry(
        upstream_cluster=common.upstream_cluster,
        route_name=common.route_name,
        start_time=start.seconds + start.nanos / 1e9,
        duration_ms=duration,
        request_bytes=common.downstream_wire_bytes_received
        or request.request_headers_bytes + request.request_body_bytes,
        response_bytes=common.downstream_wire_bytes_sent
        or response.response_headers_bytes + response.response_body_bytes,
        response_code=response.response_code.value,
        response_code_details=response.response_code_details,
        response_flags=_flags(common.response_flags),
        method=_METHOD_NAMES.get(request.request_method, ""),
        scheme=request.scheme,
        authority=request.authority,
        path=request.path,
        user_agent=request.user_agent,
        request_id=request.request_id,
        protocol_version=_HTTP_VERSIONS.get(pb.protocol_version, ""),
        downstream_remote_address=_address(common.downstream_remote_address),
        upstream_remote_address=_address(common.upstream_remote_address),
        request_headers=dict(request.request_headers),
        response_headers=_response_headers(common, response),
        response_trailers=dict(response.response_trailers),
        tls=_tls(common),
        upstream_tls=_upstream_tls(common),
        peer_state=peer,
        grpc_request_messages=grpc_counts[0] if grpc_counts else None,
        grpc_response_messages=grpc_counts[1] if grpc_counts else None,
        service_host=service_host,
        service_name=service_name,
    )


def tcp_entry(pb: accesslog_pb2.TCPAccessLogEntry) -> TcpEntry:
    """Map Envoy's TCP entry; entries without a type (older Envoys) are connection ends."""
    common = pb.common_properties
    start = common.start_time
    peer, _ = _filter_state(common)
    service_host, service_name = _cluster_service(common)
    return TcpEntry(
        event=_TCP_EVENTS.get(common.access_log_type, TcpEvent.CLOSE),
        upstream_cluster=common.upstream_cluster,
        route_name=common.route_name,
        stream_id=common.stream_id,
        start_time=start.seconds + start.nanos / 1e9,
        duration_ms=_ms(common.duration),
        received_bytes=pb.connection_properties.received_bytes,
        sent_bytes=pb.connection_properties.sent_bytes,
        response_flags=_flags(common.response_flags),
        downstream_remote_address=_address(common.downstream_remote_address),
        upstream_remote_address=_address(common.upstream_remote_address),
        tls=_tls(common),
        upstream_tls=_upstream_tls(common),
        peer_state=peer,
        service_host=service_host,
        service_name=service_name,
    )


def identifier_node(identifier: als_pb2.StreamAccessLogsMessage.Identifier) -> NodeIdentity:
    """The reporter identity from a stream's Identifier (node id + metadata + log name)."""
    node = identifier.node
    metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    return node_identity(node.id, metadata, log_name=identifier.log_name)


# ----------------------------------------------------------------------------- the servicer


@dataclass(slots=True)
class _Batch:
    node: NodeIdentity
    http: Any  # repeated HTTPAccessLogEntry, or None
    tcp: Any   # repeated TCPAccessLogEntry, or None
    size: int
    received_at: float


class IngestMetrics:
    """The service's own ingest, drop, backlog and stream metrics.

    The counters are ``envoy_mixer.runtime.metrics`` ones (a list add per batch, no lock);
    the gauges are prometheus_client's, read at scrape time or moved once per stream.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        types = [("http",), ("tcp",)]
        self.received = Counter(
            "mixer_telemetry_entries_received", "Access-log entries received, by type.",
            ["type"], preset=types, registry=registry)
        self.processed = Counter(
            "mixer_telemetry_entries_processed", "Access-log entries turned into metrics.",
            ["type"], preset=types, registry=registry)
        self.dropped = Counter(
            "mixer_telemetry_entries_dropped",
            "Entries dropped: backlog_full (processing fell behind), malformed, no_config.",
            ["reason"], preset=[("backlog_full",), ("malformed",), ("no_config",)],
            registry=registry)
        self.backlog = Gauge(
            "mixer_telemetry_backlog_entries", "Entries received but not yet processed.",
            registry=registry)
        self.lag = Gauge(
            "mixer_telemetry_lag_seconds", "Age of the oldest unprocessed batch.",
            registry=registry)
        self.streams_opened = Counter(
            "mixer_telemetry_streams_opened", "ALS streams accepted.", registry=registry)
        self.streams_closed = Counter(
            "mixer_telemetry_streams_closed",
            "ALS streams ended: client (Envoy closed or reset it) or max_age (we ended it).",
            ["reason"], preset=[("client",), ("max_age",)], registry=registry)
        self.streams_active = Gauge(
            "mixer_telemetry_streams_active", "ALS streams open now.", registry=registry)


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Reads ALS streams into a bounded backlog; ``run_worker`` drains it into the pipeline."""

    def __init__(
        self,
        snapshot: Snapshot[TelemetryConfig],
        pipeline: Pipeline,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._pipeline = pipeline
        self._clock = clock
        self.metrics = IngestMetrics(registry)
        self._received_http = self.metrics.received.labels("http")
        self._received_tcp = self.metrics.received.labels("tcp")
        self._processed_http = self.metrics.processed.labels("http")
        self._processed_tcp = self.metrics.processed.labels("tcp")
        self._dropped_full = self.metrics.dropped.labels("backlog_full")
        self._dropped_malformed = self.metrics.dropped.labels("malformed")
        self._pending: deque[_Batch] = deque()
        self._pending_entries = 0
        self._wakeup = asyncio.Event()
        self.metrics.backlog.set_function(lambda: self._pending_entries)
        self.metrics.lag.set_function(self._lag)

    def _lag(self) -> float:
        return self._clock() - self._pending[0].received_at if self._pending else 0.0

    def _config(self) -> TelemetryConfig | None:
        return self._snapshot.get() if self._snapshot.loaded else None

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Drain one Envoy stream (one per worker per logger) as fast as it arrives."""
        started = self._clock()
        node = UNKNOWN_NODE
        self.metrics.streams_opened.inc()
        self.metrics.streams_active.inc()
        reason = "client"
        try:
            async for message in request_iterator:
                if message.HasField("identifier"):
                    node = identifier_node(message.identifier)
                    log_event(_log, "als_stream_identified", node_id=node.node_id,
                              log_name=node.log_name)
                self.receive(message, node)
                config = self._config()
                max_age = config.max_stream_age_seconds if config else 0.0
                if max_age and self._clock() - started >= max_age:
                    reason = "max_age"
                    break
        finally:
            self.metrics.streams_active.dec()
            self.metrics.streams_closed.labels(reason).inc()
        return als_pb2.StreamAccessLogsResponse()

    def receive(
        self, message: als_pb2.StreamAccessLogsMessage, node: NodeIdentity = UNKNOWN_NODE
    ) -> None:
        """Queue one stream message's entries from ``node`` (the stream reader's step).

        Never waits: with no config yet or a full backlog the entries are counted as dropped.
        Tests and benchmarks call it to feed the servicer without a gRPC stream.
        """
        which = message.WhichOneof("log_entries")
        if which == "http_logs":
            http, tcp = message.http_logs.log_entry, None
            size = len(http)
            self._received_http.inc(size)
        elif which == "tcp_logs":
            http, tcp = None, message.tcp_logs.log_entry
            size = len(tcp)
            self._received_tcp.inc(size)
        else:
            return  # identifier-only message: nothing to record
        config = self._config()
        if config is None:  # no good config yet: nothing defines the metrics
            self.metrics.dropped.labels("no_config").inc(size)
            return
        if len(self._pending) >= config.queue_max_batches:
            self._dropped_full.inc(size)
            return
        self._pending.append(_Batch(node, http, tcp, size, self._clock()))
        self._pending_entries += size
        self._wakeup.set()

    def process_pending(self, max_batches: int | None = None) -> int:
        """Process queued batches now (the worker's step; tests and benchmarks call it)."""
        done = 0
        pipeline = self._pipeline
        while self._pending and (max_batches is None or done < max_batches):
            batch = self._pending.popleft()
            self._pending_entries -= batch.size
            done += 1
            if batch.http is not None:
                ok = 0
                for pb in batch.http:
                    try:
                        pipeline.process_http(http_entry(pb), batch.node)
                        ok += 1
                    except Exception as exc:  # one odd entry must not stop the stream's others
                        self._malformed(exc)
                self._processed_http.inc(ok)
            else:
                ok = 0
                for pb in batch.tcp:
                    try:
                        pipeline.process_tcp(tcp_entry(pb), batch.node)
                        ok += 1
                    except Exception as exc:
                        self._malformed(exc)
                self._processed_tcp.inc(ok)
        return done

    def _malformed(self, exc: Exception) -> None:
        self._dropped_malformed.inc()
        log_event(_log, "entry_malformed", logging.WARNING, error=repr(exc))

    async def run_worker(self) -> None:
        """Forever: wait for batches, process a few, yield to the stream readers."""
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            self.process_pending(max_batches=8)
            await asyncio.sleep(0)

    @property
    def backlog(self) -> int:
        """Entries waiting to be processed."""
        return self._pending_entries


def add_to_server(servicer: AccessLogServicer, server: Any) -> None:
    """Register the servicer with a ``grpc.aio.Server``."""
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(servicer, server)
