"""Host names as Istio reads them: short names, wildcards, gateway references, durations."""

from __future__ import annotations

import pytest

from controlplane.mesh.hosts import host_matches, resolve_gateway, resolve_short_name
from controlplane.mesh.schema.common import parse_duration


@pytest.mark.parametrize(("host", "expected"), [
    ("reviews", "reviews.default.svc.cluster.local"),
    ("reviews.default", "reviews.default"),
    ("reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local"),
    ("*", "*"),
    ("*.example.com", "*.example.com"),
    ("10.0.0.1", "10.0.0.1"),
    ("::1", "::1"),
])
def test_short_name_resolution(host: str, expected: str) -> None:
    """Only a dotless, non-IP, non-* name is qualified with namespace and cluster domain."""
    assert resolve_short_name(host, "default") == expected


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("*", "a.example.com", True),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "example.com", False),
    ("a.example.com", "a.example.com", True),
    ("a.example.com", "*.example.com", False),
    ("*.example.com", "*.a.example.com", True),
])
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    """A wildcard pattern covers the names (and narrower wildcards) under its suffix."""
    assert host_matches(pattern, host) is expected


@pytest.mark.parametrize(("name", "expected"), [
    ("mesh", "mesh"),
    ("public", "shop/public"),
    ("istio-system/public", "istio-system/public"),
    ("public.istio-system.svc.cluster.local", "istio-system/public"),
])
def test_gateway_reference(name: str, expected: str) -> None:
    """VirtualService gateways resolve to namespace/name in the VirtualService's namespace."""
    assert resolve_gateway(name, "shop") == expected


@pytest.mark.parametrize(("text", "seconds"), [
    ("5s", 5.0), ("100ms", 0.1), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025),
])
def test_durations(text: str, seconds: float) -> None:
    """Durations use Go's syntax, as Istio's files do."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "s", "1d"])
def test_bad_durations(text: str) -> None:
    """Anything else is rejected."""
    with pytest.raises(ValueError):
        parse_duration(text)
