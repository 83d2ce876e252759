"""``Sidecar`` spec (istio/api networking/v1alpha3 sidecar.proto).

Without traffic capture this is how a workload's Envoy is described, Istio's own way:
``ingress`` listeners forward a port to the app (``defaultEndpoint``), ``egress`` listeners
are what the app dials (a port on ``bind``, serving ``hosts``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from controlplane.mesh.schema.common import (
    PortNumber,
    Protocol,
    Strict,
    Unsupported,
    WorkloadSelector,
    unsupported,
)

CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]


class SidecarPort(Strict):
    """``SidecarPort``: the listener's port."""

    number: PortNumber
    protocol: Protocol = ""
    name: str = ""
    target_port: Unsupported = unsupported("targetPort")  # deprecated in Istio


class IngressListener(Strict):
    """``Sidecar.ingress[]``."""

    port: SidecarPort
    bind: str = ""
    capture_mode: CaptureMode = Field("DEFAULT", alias="captureMode")
    default_endpoint: str = Field("", alias="defaultEndpoint")
    tls: Unsupported = unsupported("tls")
    connection_pool: Unsupported = unsupported("connectionPool")


class EgressListener(Strict):
    """``Sidecar.egress[]``."""

    port: SidecarPort | None = None
    bind: str = ""
    capture_mode: CaptureMode = Field("DEFAULT", alias="captureMode")
    hosts: list[str] = Field(min_length=1)


class OutboundTrafficPolicy(Strict):
    """``Sidecar.outboundTrafficPolicy``."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "REGISTRY_ONLY"
    egress_proxy: Unsupported = unsupported("egressProxy")


class SidecarSpec(Strict):
    """``Sidecar.spec``."""

    workload_selector: WorkloadSelector | None = Field(None, alias="workloadSelector")
    ingress: list[IngressListener] = []
    egress: list[EgressListener] = []
    outbound_traffic_policy: OutboundTrafficPolicy | None = Field(
        None, alias="outboundTrafficPolicy")
    inbound_connection_pool: Unsupported = unsupported("inboundConnectionPool")
