"""remote.ip as Envoy derives the remote address: X-Forwarded-For hops, trusted proxies, junk."""

from __future__ import annotations

from extauthz.request import remote_ip


def test_trusted_hop_is_the_client() -> None:
    """With one trusted proxy, the client is the hop left of the peer."""
    assert remote_ip({"x-forwarded-for": "9.9.9.9, 5.6.7.8"}, "5.6.7.8", 1) == "9.9.9.9"


def test_no_trusted_proxy_means_the_peer() -> None:
    """With no trusted proxy a client cannot pick its remote.ip by sending a header."""
    assert remote_ip({"x-forwarded-for": "9.9.9.9"}, "1.2.3.4", 0) == "1.2.3.4"


def test_a_hop_that_is_not_an_ip_falls_back_to_the_peer() -> None:
    """Envoy ignores an X-Forwarded-For hop that is no IP and keeps the peer (found by the
    golden differential test: `x-forwarded-for: not-an-ip` against remoteIpBlocks)."""
    assert remote_ip({"x-forwarded-for": "not-an-ip"}, "1.2.3.4", 1) == "1.2.3.4"
    assert remote_ip({"x-forwarded-for": "not-an-ip, 1.2.3.4"}, "1.2.3.4", 1) == "1.2.3.4"
