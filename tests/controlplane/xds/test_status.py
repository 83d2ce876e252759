"""Per-type proxy status: NOT SENT, STALE, SYNCED, NACKED with Envoy's message."""

from __future__ import annotations

from controlplane.xds.status import StatusBoard
from controlplane.xds.types import CLUSTER, LISTENER


def test_states_follow_sent_ack_and_nack() -> None:
    """Sent is STALE until ACKed (SYNCED); a NACK of the last response is NACKED."""
    board = StatusBoard()
    board.connected("fe.default", "sidecar~1~fe.default~default.svc.cluster.local", "id", 1)
    proxy = board.get("fe.default")
    assert proxy is not None and proxy.of(CLUSTER).state == "NOT SENT"
    board.sent("fe.default", CLUSTER, "v1", "1")
    assert board.get("fe.default").of(CLUSTER).state == "STALE"  # type: ignore[union-attr]
    board.acked("fe.default", CLUSTER, "v1", "1")
    assert board.get("fe.default").of(CLUSTER).state == "SYNCED"  # type: ignore[union-attr]
    board.sent("fe.default", LISTENER, "v2", "2")
    board.nacked("fe.default", LISTENER, "2", "Proto constraint validation failed")
    lds = board.get("fe.default").of(LISTENER)  # type: ignore[union-attr]
    assert (lds.state, lds.nack_count, lds.nack_version) == ("NACKED", 1, "v2")
    assert lds.nack_message == "Proto constraint validation failed"
    assert board.get("fe.default").as_dict()["types"]["LDS"]["state"] == "NACKED"  # type: ignore[union-attr]


def test_an_older_stream_ending_does_not_disconnect_the_newer() -> None:
    """A reconnect replaces the status; the old stream's end leaves it connected."""
    board = StatusBoard()
    board.connected("p", "n", "", 1)
    board.connected("p", "n", "", 2)
    board.disconnected("p", 1)
    assert board.get("p").connected  # type: ignore[union-attr]
    board.disconnected("p", 2)
    assert not board.get("p").connected  # type: ignore[union-attr]


def test_a_delta_ack_records_the_version_sent_with_its_nonce() -> None:
    """Delta ACKs carry only the nonce: the acked version is the one sent with it."""
    board = StatusBoard()
    board.connected("p", "n", "", 1)
    board.sent("p", CLUSTER, "v7", "3")
    board.acked("p", CLUSTER, "", "3")
    cds = board.get("p").of(CLUSTER)  # type: ignore[union-attr]
    assert (cds.state, cds.acked_version) == ("SYNCED", "v7")
