"""The delta (incremental) ADS state machine, driven with plain DeltaDiscoveryRequests."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from controlplane.xds.cache import Snapshot
from controlplane.xds.delta import DeltaProtocol, resource_version
from controlplane.xds.types import CLUSTER, ENDPOINT


def snap(*clusters: str, timeout: int = 1) -> Snapshot:
    return Snapshot.build({
        CLUSTER: [Cluster(name=c, connect_timeout={"seconds": timeout}) for c in clusters],
        ENDPOINT: [ClusterLoadAssignment(cluster_name=c) for c in clusters],
    })


def req(type_url: str, nonce: str = "", subscribe: tuple[str, ...] = (),
        unsubscribe: tuple[str, ...] = (), error: str | None = None,
        initial: dict[str, str] | None = None) -> DeltaDiscoveryRequest:
    out = DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce,
                                resource_names_subscribe=list(subscribe),
                                resource_names_unsubscribe=list(unsubscribe),
                                initial_resource_versions=initial or {})
    if error is not None:
        out.error_detail.message = error
    return out


def test_wildcard_cds_gets_everything_then_only_changes_and_removals() -> None:
    """CDS (wildcard) gets all clusters; a change sends only the changed one; a cluster
    gone from the snapshot is sent as removed."""
    p = DeltaProtocol()
    [first] = p.on_request(req(CLUSTER), snap("a", "b")).responses
    assert sorted(r.name for r in first.resources) == ["a", "b"]
    assert p.on_request(req(CLUSTER, first.nonce), snap("a", "b")).responses == ()
    [changed] = p.on_snapshot(snap("a", "b", "c"))
    assert [r.name for r in changed.resources] == ["c"] and not changed.removed_resources
    [removed] = p.on_snapshot(snap("a", "c"))
    assert list(removed.removed_resources) == ["b"] and not removed.resources


def test_named_subscriptions_and_unsubscribe() -> None:
    """EDS sends what is subscribed; unsubscribing stops updates for that name."""
    p, s = DeltaProtocol(), snap("a", "b")
    [eds] = p.on_request(req(ENDPOINT, subscribe=("a",)), s).responses
    assert [r.name for r in eds.resources] == ["a"]
    [more] = p.on_request(req(ENDPOINT, eds.nonce, subscribe=("b",)), s).responses
    assert [r.name for r in more.resources] == ["b"]
    p.on_request(req(ENDPOINT, more.nonce, unsubscribe=("a",)), s)
    assert p.on_snapshot(snap("b")) == ()


def test_reconnect_with_initial_versions_sends_nothing_unchanged() -> None:
    """initial_resource_versions that match the snapshot: nothing is sent again."""
    s = snap("a")
    known = {"a": resource_version(s.of(CLUSTER)["a"])}
    assert DeltaProtocol().on_request(req(CLUSTER, initial=known), s).responses == ()
    stale = DeltaProtocol().on_request(req(CLUSTER, initial={"a": "old", "x": "old"}), s)
    [response] = stale.responses
    assert [r.name for r in response.resources] == ["a"]
    assert list(response.removed_resources) == ["x"]


def test_nack_is_recorded_and_not_answered() -> None:
    """A NACK carries Envoy's message and gets no response."""
    p = DeltaProtocol()
    [first] = p.on_request(req(CLUSTER), snap("a")).responses
    out = p.on_request(req(CLUSTER, first.nonce, error="bad"), snap("a"))
    assert out.reply.meaning == "nack" and out.reply.error == "bad" and out.responses == ()


def test_changed_cluster_resends_its_endpoints() -> None:
    """After a cluster changes, its (unchanged) EDS is sent again so the re-warm finishes."""
    p = DeltaProtocol()
    [cds] = p.on_request(req(CLUSTER), snap("a")).responses
    [eds] = p.on_request(req(ENDPOINT, subscribe=("a",)), snap("a")).responses
    p.on_request(req(CLUSTER, cds.nonce), snap("a"))
    p.on_request(req(ENDPOINT, eds.nonce), snap("a"))
    pushed = p.on_snapshot(snap("a", timeout=9))
    assert [(r.type_url, [x.name for x in r.resources]) for r in pushed] == [
        (CLUSTER, ["a"]), (ENDPOINT, ["a"])]
