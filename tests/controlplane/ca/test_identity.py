"""SPIFFE identities and TTL durations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.ca import InvalidDuration, InvalidIdentity, SpiffeId, parse_duration
from controlplane.ca.durations import format_duration


def test_uri_is_istios_spiffe_form() -> None:
    """``spiffe://<td>/ns/<ns>/sa/<sa>``, and it parses back."""
    ident = SpiffeId("cluster.local", "foo", "bar-sa")
    assert ident.uri == "spiffe://cluster.local/ns/foo/sa/bar-sa"
    assert SpiffeId.parse(ident.uri) == ident


@pytest.mark.parametrize(("td", "ns", "sa"), [
    ("cluster.local", "Foo", "a"),          # uppercase namespace
    ("cluster.local", "a/b", "a"),          # a slash would forge another path
    ("cluster.local", "a", "a/sa/b"),
    ("cluster.local", "", "a"),
    ("Cluster.Local", "a", "a"),            # SPIFFE trust domains are lowercase
    ("cluster.local", "a" * 64, "a"),
])
def test_invalid_parts_are_refused(td: str, ns: str, sa: str) -> None:
    """Every part follows Kubernetes/SPIFFE naming; anything else raises InvalidIdentity."""
    with pytest.raises(InvalidIdentity):
        SpiffeId(td, ns, sa)


def test_parse_refuses_other_uris() -> None:
    """Only the Istio form parses."""
    with pytest.raises(InvalidIdentity):
        SpiffeId.parse("spiffe://cluster.local/workload/x")


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", timedelta(hours=24)),
    ("90m", timedelta(minutes=90)),
    ("1h30m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)),
    ("1.5h", timedelta(minutes=90)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    """Go-style durations with h/m/s parse to the right timedelta."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1d", "-1h", "0s", "1h 30m", "1hx"])
def test_parse_duration_refuses_malformed_or_zero(text: str) -> None:
    """Malformed, unitless, unknown-unit and non-positive durations raise InvalidDuration."""
    with pytest.raises(InvalidDuration):
        parse_duration(text)


def test_parse_duration_maximum() -> None:
    """A duration above ``maximum`` is refused with the maximum in the message."""
    with pytest.raises(InvalidDuration, match="2160h"):
        parse_duration("2161h", maximum=timedelta(days=90))


def test_format_duration_round_trips() -> None:
    """``format_duration`` writes what ``parse_duration`` reads."""
    for value in (timedelta(hours=24), timedelta(minutes=90), timedelta(seconds=3725)):
        assert parse_duration(format_duration(value)) == value
