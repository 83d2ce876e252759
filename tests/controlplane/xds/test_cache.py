"""Snapshots are versioned by content; only proxies whose snapshot changed are told."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.types import CLUSTER


def snap(*names: str) -> Snapshot:
    return Snapshot.build({CLUSTER: [Cluster(name=n) for n in names]})


def test_same_content_gives_same_versions() -> None:
    """Two snapshots built from equal resources carry equal versions (restarts keep them)."""
    assert snap("a", "b").versions == snap("b", "a").versions
    assert snap("a").versions[CLUSTER] != snap("a", "b").versions[CLUSTER]


def test_duplicate_names_are_refused() -> None:
    """A snapshot never carries one name twice (Envoy would NACK it)."""
    with pytest.raises(ValueError, match="duplicate Cluster 'a'"):
        snap("a", "a")


def test_only_changed_proxies_are_notified() -> None:
    """set_all wakes the streams of the proxies whose versions changed, and no others."""
    cache = SnapshotCache()
    woken: list[str] = []
    for key in ("p1", "p2"):
        cache.subscribe(key, woken.append)
    assert cache.set_all({"p1": snap("a"), "p2": snap("b")}) == ("p1", "p2")
    woken.clear()
    assert cache.set_all({"p1": snap("a"), "p2": snap("b", "c")}) == ("p2",)
    assert woken == ["p2"]


def test_unsubscribed_stream_is_not_notified() -> None:
    """After unsubscribe a stream hears nothing more."""
    cache = SnapshotCache()
    woken: list[str] = []
    stop = cache.subscribe("p", woken.append)
    stop()
    cache.set_snapshot("p", snap("a"))
    assert woken == []
