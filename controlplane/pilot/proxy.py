"""The proxies of a mesh: one Envoy per WorkloadEntry, a gateway when a Gateway selects it.

A proxy's key is ``NAME.NAMESPACE`` of its WorkloadEntry, which is also what its Istio node id
carries (``sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local``; ``router`` for gateways).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controlplane.envoy.model import Workload as EnvoyWorkload
from controlplane.mesh.model import Gateway, Mesh, Sidecar, Workload

__all__ = ["Proxy", "proxies", "proxy_for"]

Role = Literal["sidecar", "router"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """One Envoy: the workload it stands for, its role and what configures it."""

    workload: Workload
    role: Role
    sidecar: Sidecar | None
    gateways: tuple[Gateway, ...]

    @property
    def key(self) -> str:
        """``name.namespace`` of the WorkloadEntry."""
        return f"{self.workload.name}.{self.workload.namespace}"

    @property
    def identity(self) -> EnvoyWorkload:
        """The workload in the vocabulary of the Envoy builders (labels, peer metadata)."""
        labels = dict(self.workload.labels)
        app = labels.pop("app", self.workload.name)
        version = labels.pop("version", "v1")
        return EnvoyWorkload(name=app, namespace=self.workload.namespace, app=app,
                             version=version, extra_labels=tuple(sorted(labels.items())),
                             ip=self.workload.address, pod=self.workload.name)

    @property
    def canonical_name(self) -> str:
        """Istio's canonical service name: the ``service.istio.io/canonical-name`` label,
        else ``app.kubernetes.io/name``, else ``app``, else the WorkloadEntry's name."""
        labels = self.workload.labels
        for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
            if labels.get(key):
                return labels[key]
        return self.workload.name

    @property
    def node_id(self) -> str:
        """Istio's node id for this proxy."""
        return self.identity.node_id(self.role)

    @property
    def ratelimit_domain(self) -> str:
        """The rate-limit domain it sends: ``ingress``/``egress`` for Istio's gateways
        (label ``istio: ingressgateway``), else the ``app`` label (as ``mixer up`` does)."""
        istio = self.workload.labels.get("istio", "")
        if self.role == "router" and istio.endswith("gateway"):
            return istio.removesuffix("gateway")
        return self.identity.app_label


def proxy_for(mesh: Mesh, workload: Workload) -> Proxy:
    """The proxy of ``workload``."""
    gateways = mesh.gateways_for(workload)
    return Proxy(workload, "router" if gateways else "sidecar",
                 None if gateways else mesh.sidecar_for(workload), gateways)


def proxies(mesh: Mesh) -> tuple[Proxy, ...]:
    """Every proxy of the mesh, by key."""
    return tuple(sorted((proxy_for(mesh, w) for w in mesh.workloads), key=lambda p: p.key))
