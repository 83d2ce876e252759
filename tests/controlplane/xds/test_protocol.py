"""The SotW state machine of one stream, driven with plain DiscoveryRequests."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.xds.cache import Snapshot
from controlplane.xds.protocol import StreamProtocol
from controlplane.xds.types import CLUSTER, ENDPOINT, LISTENER, SECRET


def snap(*clusters: str, timeout: int = 1, listeners: tuple[str, ...] = ("l1",)) -> Snapshot:
    return Snapshot.build({
        CLUSTER: [Cluster(name=c, connect_timeout={"seconds": timeout}) for c in clusters],
        ENDPOINT: [ClusterLoadAssignment(cluster_name=c) for c in clusters],
        LISTENER: [Listener(name=n) for n in listeners],
        SECRET: [Secret(name="default", tls_certificate={"certificate_chain": {
            "inline_string": "x"}})],
    })


def req(type_url: str, nonce: str = "", version: str = "", names: tuple[str, ...] = (),
        error: str | None = None) -> DiscoveryRequest:
    out = DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version,
                           resource_names=list(names))
    if error is not None:
        out.error_detail.code = 13
        out.error_detail.message = error
    return out


def ack(p: StreamProtocol, type_url: str, names: tuple[str, ...] = ()) -> DiscoveryRequest:
    version, nonce = p.sent(type_url)
    return req(type_url, nonce, version, names)


def test_initial_request_is_answered_with_the_whole_wildcard_type() -> None:
    """The first CDS request (empty nonce, no names) gets every cluster of the snapshot."""
    p = StreamProtocol()
    reply = p.on_request(req(CLUSTER), snap("a", "b"))
    assert reply.meaning == "initial"
    [response] = reply.responses
    assert len(response.resources) == 2 and response.nonce and response.version_info


def test_ack_is_not_answered_again() -> None:
    """An ACK of the last response gets no response (answering it would loop)."""
    p, s = StreamProtocol(), snap("a")
    p.on_request(req(LISTENER), s)
    reply = p.on_request(ack(p, LISTENER), s)
    assert reply.meaning == "ack" and reply.responses == ()


def test_stale_nonce_is_ignored() -> None:
    """A request answering a superseded nonce is stale and ignored."""
    p = StreamProtocol()
    p.on_request(req(CLUSTER), snap("a"))
    _, old = p.sent(CLUSTER)
    p.on_snapshot(snap("a", "b"))
    reply = p.on_request(req(CLUSTER, old, "v-old"), snap("a", "b"))
    assert reply.meaning == "stale" and reply.responses == ()


def test_nack_is_recorded_and_the_rejected_snapshot_not_resent() -> None:
    """A NACK gets no answer; the same snapshot is not pushed again, a new one is."""
    p, s = StreamProtocol(), snap("a")
    first = p.on_request(req(CLUSTER), s).responses[0]
    p.on_request(ack(p, CLUSTER), s)
    bad = snap("a", timeout=2)
    [pushed] = p.on_snapshot(bad)[:1]
    reply = p.on_request(req(CLUSTER, pushed.nonce, first.version_info, error="bad cluster"), bad)
    assert reply.meaning == "nack" and reply.error == "bad cluster" and reply.responses == ()
    assert p.on_snapshot(bad) == ()
    fixed = p.on_snapshot(snap("a", timeout=3))
    assert [r.type_url for r in fixed] == [CLUSTER]


def test_eds_request_after_cds_push_is_answered_even_though_it_looks_like_an_ack() -> None:
    """After a CDS push, Envoy's EDS request with the old nonce and names is answered."""
    p, s = StreamProtocol(), snap("a")
    p.on_request(req(CLUSTER), s)
    p.on_request(ack(p, CLUSTER), s)
    p.on_request(req(ENDPOINT, names=("a",)), s)
    assert p.on_request(ack(p, ENDPOINT, ("a",)), s).responses == ()
    changed = snap("a", timeout=5)  # only the cluster changes: EDS content is the same
    assert [r.type_url for r in p.on_snapshot(changed)] == [CLUSTER]
    reply = p.on_request(ack(p, ENDPOINT, ("a",)), changed)
    assert [r.type_url for r in reply.responses] == [ENDPOINT]


def test_reconnect_with_empty_nonce_is_always_answered() -> None:
    """A fresh stream's request carrying an old version and no nonce is answered."""
    p = StreamProtocol()
    reply = p.on_request(req(ENDPOINT, "", "v-from-before", ("a",)), snap("a"))
    assert reply.meaning == "initial" and len(reply.responses) == 1


def test_named_types_send_only_requested_names_and_answer_a_grown_name_set() -> None:
    """EDS sends only the requested names, and answers when the set of names grows."""
    p, s = StreamProtocol(), snap("a", "b")
    [first] = p.on_request(req(ENDPOINT, names=("a",)), s).responses
    assert len(first.resources) == 1
    [second] = p.on_request(ack(p, ENDPOINT, ("a", "b")), s).responses
    assert len(second.resources) == 2


def test_snapshot_change_pushes_only_changed_requested_types_in_push_order() -> None:
    """A new snapshot pushes the changed types the proxy asked for, CDS before LDS."""
    p, s = StreamProtocol(), snap("a")
    p.on_request(req(CLUSTER), s)
    p.on_request(req(LISTENER), s)
    assert p.on_snapshot(s) == ()
    both = snap("a", "b", listeners=("l1", "l2"))
    assert [r.type_url for r in p.on_snapshot(both)] == [CLUSTER, LISTENER]


def test_secrets_are_withheld_from_an_unproven_stream() -> None:
    """Without a proven identity an SDS request is answered with no secret."""
    s = snap("a")
    closed = StreamProtocol(allow_secrets=False).on_request(req(SECRET, names=("default",)), s)
    assert len(closed.responses[0].resources) == 0
    opened = StreamProtocol(allow_secrets=True).on_request(req(SECRET, names=("default",)), s)
    assert len(opened.responses[0].resources) == 1
