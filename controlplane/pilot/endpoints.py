"""EDS: the ClusterLoadAssignment of each outbound EDS cluster, from the mesh's endpoints."""

from __future__ import annotations

from envoy.config.endpoint.v3.endpoint_components_pb2 import LbEndpoint
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from controlplane.envoy.core import socket_address
from controlplane.mesh.model import Mesh
from controlplane.pilot.clusters import ClusterRef, subset_endpoints

__all__ = ["load_assignment"]


def load_assignment(mesh: Mesh, ref: ClusterRef) -> ClusterLoadAssignment:
    """The endpoints of ``ref`` (its subset's, if any), each on its port for the service port."""
    out = ClusterLoadAssignment(cluster_name=ref.name)
    group = out.endpoints.add()
    for endpoint in subset_endpoints(mesh, ref):
        lb = LbEndpoint(endpoint={"address": socket_address(endpoint.address,
                                                            endpoint.port_for(ref.port))})
        if endpoint.weight:
            lb.load_balancing_weight.value = endpoint.weight
        group.lb_endpoints.append(lb)
    return out
