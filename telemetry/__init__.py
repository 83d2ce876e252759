"""Telemetry service: Envoy access-log streams → Istio's standard metrics, access logs, graph.

Envoy streams HTTP and TCP access-log entries over ``AccessLogService/StreamAccessLogs``; the
servicer (``server``) maps them to domain entries (``entries``), ``labels`` computes Istio's
label values from each entry and the reporter/peer identities (``identity``), ``recorder``
keeps the series (with a cardinality cap and idle expiry) and renders them for Prometheus,
``graph`` keeps a short window of per-edge stats for ``/graph`` and ``accesslog`` writes JSON
lines. The domain modules import neither ``grpc`` nor ``envoy``.
"""

from __future__ import annotations

__all__: list[str] = []
