"""The bootstrap: node identity, admin address, static listeners and clusters."""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3.listener_pb2 import Listener

from controlplane.envoy.core import socket_address
from controlplane.envoy.model import Endpoint, Workload


def node(workload: Workload, proxy_type: str) -> Node:
    """The ``node`` Envoy reports: Istio's node id, ``<name>.<ns>``, the metadata telemetry reads.

    ``proxy_type`` is Istio's ``sidecar`` or ``router`` (gateways).
    """
    out = Node(id=workload.node_id(proxy_type), cluster=workload.node_cluster)
    out.metadata.update(workload.metadata())
    return out


def bootstrap(node: Node, admin: Endpoint, listeners: Sequence[Listener],
              clusters: Sequence[Cluster]) -> Bootstrap:
    """The whole bootstrap with static resources only (no xDS)."""
    out = Bootstrap(node=node, static_resources={"listeners": listeners, "clusters": clusters})
    out.admin.address.CopyFrom(socket_address(admin.host, admin.port))
    return out
