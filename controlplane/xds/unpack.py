"""``Any`` back to its message, for the debug views (every type a snapshot holds)."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from controlplane.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET

__all__ = ["unpack"]

_TYPES: dict[str, type[Message]] = {CLUSTER: Cluster, ENDPOINT: ClusterLoadAssignment,
                                    LISTENER: Listener, ROUTE: RouteConfiguration,
                                    SECRET: Secret}


def unpack(packed: Any) -> Message:
    """The message inside ``packed``."""
    message = _TYPES[packed.type_url]()
    packed.Unpack(message)
    return message
