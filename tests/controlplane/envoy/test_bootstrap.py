"""controlplane.envoy.bootstrap: node identity and the static bootstrap."""

from __future__ import annotations

from controlplane.envoy.bootstrap import bootstrap, node
from controlplane.envoy.clusters import cluster
from controlplane.envoy.model import Endpoint, Workload


def test_node_has_istio_id_cluster_and_metadata() -> None:
    """Node id in Istio's form, cluster <name>.<ns>, metadata with the labels telemetry reads."""
    n = node(Workload("reviews", "shop", version="v2"), "sidecar")
    assert n.id == "sidecar~127.0.0.1~reviews-0.shop~shop.svc.cluster.local"
    assert n.cluster == "reviews.shop"
    meta = n.metadata.fields
    assert meta["WORKLOAD_NAME"].string_value == "reviews"
    assert meta["NAMESPACE"].string_value == "shop"
    assert meta["LABELS"].struct_value.fields["version"].string_value == "v2"


def test_bootstrap_is_static_resources_and_admin() -> None:
    """The bootstrap holds the node, the admin address and the given static resources."""
    n = node(Workload("frontend"), "sidecar")
    c = cluster("inbound|8080||", [Endpoint("127.0.0.1", 8090)])
    b = bootstrap(n, Endpoint("127.0.0.1", 15000), [], [c])
    assert b.node == n
    assert b.admin.address.socket_address.port_value == 15000
    assert list(b.static_resources.clusters) == [c] and not b.static_resources.listeners
    assert not b.HasField("dynamic_resources")
