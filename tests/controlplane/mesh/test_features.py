"""Every supported VirtualService / DestinationRule field lands in the model as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.mesh import Mesh, load_mesh
from controlplane.mesh import model as m
from controlplane.mesh.analyze import analyze

FEATURES = Path(__file__).parent / "testdata" / "features"


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return load_mesh(FEATURES)


def test_features_file_analyzes_clean(mesh: Mesh) -> None:
    """The features file is a consistent mesh: no findings."""
    assert analyze(mesh) == []


def test_match_conditions(mesh: Mesh) -> None:
    """uri/method/headers/queryParams matches keep their kind (exact/prefix/regex) and value."""
    [match] = mesh.virtual_services[0].http[0].match
    assert match == m.HttpMatch(
        name="api-v2", uri=m.StringMatch("prefix", "/api/"),
        method=m.StringMatch("exact", "GET"),
        headers=(("x-canary", m.StringMatch("exact", "yes")),),
        query_params=(("debug", m.StringMatch("regex", "^(1|true)$")),), port=9080)


def test_weighted_routes_to_subsets(mesh: Mesh) -> None:
    """Weighted destinations keep host (qualified), subset, port, weight and headers."""
    route = mesh.virtual_services[0].http[0].route
    assert [(d.destination.host, d.destination.subset, d.destination.port, d.weight)
            for d in route] == [
        ("reviews.shop.svc.cluster.local", "v1", None, 90),
        ("reviews.shop.svc.cluster.local", "v2", 9080, 10)]
    assert route[1].headers == m.Headers(response=m.HeaderOperations(set=(("x-subset", "v2"),)))


def test_timeout_retries_fault_headers(mesh: Mesh) -> None:
    """Timeout, retries, fault delay/abort and request header operations."""
    route = mesh.virtual_services[0].http[0]
    assert route.timeout == 1.5
    assert route.retries == m.Retry(attempts=3, per_try_timeout=0.5, retry_on="5xx",
                                    backoff=0.025)
    assert route.fault == m.Fault(m.Delay(2.0, 5.0), m.Abort(http_status=503, percentage=0.5))
    assert route.headers == m.Headers(request=m.HeaderOperations(
        set=(("x-mesh", "1"),), add=(("x-trace", "on"),), remove=("x-internal",)))


def test_redirect_and_rewrite(mesh: Mesh) -> None:
    """A redirect route has no destinations; a rewrite keeps its regex and authority."""
    redirect, rewrite = mesh.virtual_services[0].http[1:]
    assert redirect.route == ()
    assert redirect.redirect == m.Redirect(uri="/new", authority="reviews.example.com",
                                           derive_port="FROM_REQUEST_PORT", redirect_code=308)
    assert rewrite.rewrite == m.Rewrite(
        authority="reviews.internal", uri_regex_rewrite=m.RegexRewrite("^/v1/(.*)", "/\\1"))


def test_destination_rule_traffic_policy(mesh: Mesh) -> None:
    """loadBalancer, connectionPool and tls carry over, durations in seconds."""
    policy = mesh.destination_rules[0].traffic_policy
    assert policy == m.TrafficPolicy(
        load_balancer=m.LoadBalancer(consistent_hash=m.ConsistentHash(
            http_cookie=m.HttpCookie("session", "/", 3600.0),
            ring_hash=m.RingHash(1024))),
        connection_pool=m.ConnectionPool(
            tcp=m.TcpSettings(max_connections=100, connect_timeout=0.25,
                              tcp_keepalive=m.TcpKeepalive(3, 60.0, 10.0)),
            http=m.HttpSettings(http2_max_requests=1000, max_requests_per_connection=10,
                                h2_upgrade_policy="UPGRADE")),
        tls=m.ClientTLS(mode="ISTIO_MUTUAL"))


def test_subset_policy_and_endpoints(mesh: Mesh) -> None:
    """A subset has its own traffic policy and the endpoints its labels select."""
    v2 = mesh.destination_rules[0].subset("v2")
    assert v2 is not None
    assert [(e.address, e.weight) for e in v2.endpoints] == [("10.0.0.2", 3)]
    assert v2.traffic_policy == m.TrafficPolicy(
        load_balancer=m.LoadBalancer(simple="LEAST_REQUEST"),
        tls=m.ClientTLS(mode="SIMPLE", ca_certificates="/etc/certs/ca.pem",
                        sni="reviews.example.com"))
