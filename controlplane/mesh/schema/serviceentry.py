"""``ServiceEntry`` and ``WorkloadEntry`` specs (istio/api networking/v1alpha3).

A ServiceEntry is how this mesh learns about every service, internal or external: there is no
Kubernetes service registry. Its endpoints are inline ``WorkloadEntry`` messages or the
WorkloadEntry resources its ``workloadSelector`` picks.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from controlplane.mesh.schema.common import (
    ExportTo,
    PortNumber,
    Protocol,
    Strict,
    Unsupported,
    WorkloadSelector,
    reject_values,
    unsupported,
)


class WorkloadEntrySpec(Strict):
    """``WorkloadEntry`` (the resource's spec, and a ServiceEntry's inline endpoint)."""

    address: str = ""
    ports: dict[str, PortNumber] = {}
    labels: dict[str, str] = {}
    service_account: str = Field("", alias="serviceAccount")
    weight: int = Field(0, ge=0)
    # Multi-network and locality-aware routing need a topology we do not model.
    network: Unsupported = unsupported("network")
    locality: Unsupported = unsupported("locality")


class ServicePort(Strict):
    """``ServiceEntry.ports[]``."""

    number: PortNumber
    protocol: Protocol = ""
    name: str
    target_port: PortNumber | None = Field(None, alias="targetPort")


class ServiceEntrySpec(Strict):
    """``ServiceEntry.spec``."""

    hosts: list[str] = Field(min_length=1)
    addresses: list[str] = []
    ports: list[ServicePort] = []
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Annotated[
        Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"],
        reject_values({"DYNAMIC_DNS": "route external hosts through the egress gateway, "
                                      "which resolves them dynamically"}),
    ] = "NONE"
    endpoints: list[WorkloadEntrySpec] = []
    workload_selector: WorkloadSelector | None = Field(None, alias="workloadSelector")
    subject_alt_names: list[str] = Field([], alias="subjectAltNames")
    export_to: ExportTo = Field(None, alias="exportTo")
