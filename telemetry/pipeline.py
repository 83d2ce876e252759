"""One place that sends each domain entry to the recorder, the graph and the access log.

The servicer hands batches here; reload calls ``configure`` with the new snapshot. Pure domain
code: no gRPC, no protobuf, clocks injected.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from envoy_mixer.common.clock import Clock, monotonic, wall
from telemetry.accesslog import AccessLogWriter
from telemetry.config import TelemetryConfig
from telemetry.entries import HttpEntry, TcpEntry
from telemetry.graph import ServiceGraph
from telemetry.identity import NodeIdentity
from telemetry.recorder import Recorder


class Pipeline:
    """Entries in; series, graph edges and access-log lines out."""

    def __init__(
        self,
        config: TelemetryConfig,
        registry: CollectorRegistry | None = None,
        *,
        clock: Clock = monotonic,
        wall_clock: Clock = wall,
    ) -> None:
        self.recorder = Recorder(config, registry, clock=clock)
        self.graph = ServiceGraph(config.graph_window_seconds, clock=wall_clock)
        self.access_log: AccessLogWriter | None = None
        self.config = config
        self._open_access_log(config)

    def _open_access_log(self, config: TelemetryConfig) -> None:
        if config.access_log_enabled:
            self.access_log = AccessLogWriter(config.access_log_output,
                                              config.access_log_sampling)

    def configure(self, config: TelemetryConfig) -> None:
        """Swap in a reloaded config (series of unchanged metrics are kept)."""
        old = self.config
        self.config = config
        self.recorder.configure(config)
        self.graph.configure(config.graph_window_seconds)
        access = (config.access_log_enabled, config.access_log_output)
        if access != (old.access_log_enabled, old.access_log_output):
            self.close()
            self._open_access_log(config)
        elif self.access_log is not None:
            self.access_log.sampling = config.access_log_sampling

    def process_http(self, entry: HttpEntry, node: NodeIdentity) -> None:
        """Record one HTTP/gRPC entry everywhere."""
        recorded = self.recorder.record_http(entry, node)
        self.graph.add_request(recorded.values, entry.duration_ms)
        if self.access_log is not None:
            self.access_log.write(entry, node, recorded.values)

    def process_tcp(self, entry: TcpEntry, node: NodeIdentity) -> None:
        """Record one TCP report everywhere."""
        recorded = self.recorder.record_tcp(entry, node)
        if not recorded.pending:  # provisional values would draw an edge nobody counted
            self.graph.add_tcp(recorded.values, recorded.opened, recorded.received, recorded.sent)
        if self.access_log is not None:
            self.access_log.write(entry, node, recorded.values)

    def flush(self) -> None:
        """Flush the access log (called periodically and at shutdown)."""
        if self.access_log is not None:
            self.access_log.flush()

    def close(self) -> None:
        """Close the access log."""
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
