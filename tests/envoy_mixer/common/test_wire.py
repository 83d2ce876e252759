"""The wire contract: Istio's cluster and node names and SPIFFE ids, both ways."""

from __future__ import annotations

import pytest

from envoy_mixer.common import wire


def test_cluster_names_round_trip() -> None:
    """inbound|PORT|| and outbound|PORT|SUBSET|HOST are built and split the same way."""
    assert wire.inbound_cluster(8080) == "inbound|8080||"
    name = wire.outbound_cluster(9080, "reviews.default.svc.cluster.local", "v1")
    assert name == "outbound|9080|v1|reviews.default.svc.cluster.local"
    assert wire.parse_cluster(name) == ("outbound", 9080, "v1", "reviews.default.svc.cluster.local")
    assert wire.parse_cluster("inbound|8080||") == ("inbound", 8080, "", "")


@pytest.mark.parametrize("name", ["mixer_authz", "BlackHoleCluster", "outbound|x||h",
                                  "sideways|80||h", "outbound|80|h"])
def test_other_cluster_names_are_not_istios(name: str) -> None:
    """Our own clusters, Istio's special ones and malformed names parse to None."""
    assert wire.parse_cluster(name) is None


def test_spiffe_ids_round_trip() -> None:
    """A workload's SPIFFE URI is built and split the same way."""
    uri = wire.spiffe_uri("cluster.local", "default", "frontend")
    assert uri == "spiffe://cluster.local/ns/default/sa/frontend"
    assert wire.parse_spiffe(uri) == ("cluster.local", "default", "frontend")


@pytest.mark.parametrize("uri", [
    "cluster.local/ns/default/sa/frontend",            # no scheme
    "spiffe:///ns/default/sa/frontend",                 # empty trust domain
    "spiffe://td/ns/default/sa/frontend/v2",            # extra segment
    "spiffe://td/ns/a/sa/b/ns/evil/sa/x",               # a second ns/sa
    "spiffe://td/ns//sa/x",                             # empty namespace
    "spiffe://td/sa/x/ns/y",                            # wrong order
])
def test_anything_but_an_exact_workload_id_is_not_one(uri: str) -> None:
    """Only spiffe://td/ns/NS/sa/SA with every part present names a workload."""
    assert wire.parse_spiffe(uri) is None


def test_node_ids_round_trip() -> None:
    """Istio's TYPE~IP~POD.NS~NS.svc.DOMAIN node id is built and split the same way."""
    node = wire.parse_node_id("sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local")
    assert node == ("sidecar", "127.0.0.1", "frontend-0", "default", "cluster.local")
    assert node is not None and str(node) == (
        "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local")
    assert wire.parse_node_id("frontend") is None
    assert wire.parse_node_id("sidecar~1.2.3.4~pod.a~b.svc.cluster.local") is None
