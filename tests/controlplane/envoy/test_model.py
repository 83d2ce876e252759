"""controlplane.envoy.model: endpoints, workload identity and upstream names."""

from __future__ import annotations

import base64
import json

import pytest

from controlplane.envoy.model import Endpoint, Upstream, Workload, spiffe_uri


def test_endpoint_parse_rejects_garbage() -> None:
    """HOST:PORT parsing names the bad value."""
    assert Endpoint.parse("authz:9191") == Endpoint("authz", 9191)
    assert Endpoint.parse("[::1]:15000") == Endpoint("::1", 15000)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        Endpoint.parse("authz")


def test_ip_hosts_are_told_apart_from_names() -> None:
    """Literal IPs (v4 and v6) are IPs; DNS names are not."""
    assert Endpoint("10.0.0.1", 1).is_ip and Endpoint("::1", 1).is_ip
    assert not Endpoint("authz", 1).is_ip


def test_workload_identity_in_istio_terms() -> None:
    """Node id, node cluster, labels and the ext_authz context extensions."""
    wl = Workload("reviews", "shop", version="v2", extra_labels=(("tier", "web"),))
    assert wl.node_id("sidecar") == "sidecar~127.0.0.1~reviews-0.shop~shop.svc.cluster.local"
    assert wl.node_cluster == "reviews.shop"
    assert wl.labels["service.istio.io/canonical-revision"] == "v2"
    assert wl.labels["tier"] == "web"
    assert wl.context_extensions()["label.tier"] == "web"
    assert json.loads(base64.b64decode(wl.peer_metadata_header())) == wl.metadata()


def test_upstream_names_follow_istio() -> None:
    """Outbound cluster name and the host names a client may use."""
    up = Upstream("ratings", Endpoint("127.0.0.1", 9106), "shop", 9080)
    assert up.cluster_name == "outbound|9080||ratings.shop.svc.cluster.local"
    assert "ratings.shop:9080" in up.domains and "ratings" in up.domains


def test_identities_are_spiffe_ids_of_service_accounts() -> None:
    """A workload's SA defaults to its name; it is in node metadata and the peer header."""
    wl = Workload("reviews", "shop")
    assert wl.principal() == "spiffe://cluster.local/ns/shop/sa/reviews"
    assert wl.metadata()["SERVICE_ACCOUNT"] == "reviews"
    gateway = Workload("istio-ingressgateway", "istio-system",
                       service_account="istio-ingressgateway-service-account")
    assert gateway.principal("example.org") == spiffe_uri(
        "example.org", "istio-system", "istio-ingressgateway-service-account")
    assert json.loads(base64.b64decode(gateway.peer_metadata_header()))["SERVICE_ACCOUNT"] == (
        "istio-ingressgateway-service-account")


def test_upstream_identity_and_sni_follow_istio() -> None:
    """The SAN checked is the destination SA's SPIFFE id; SNI outbound_.PORT_._.FQDN."""
    up = Upstream("ratings", Endpoint("127.0.0.1", 9106), "shop", 9080)
    assert up.principal() == "spiffe://cluster.local/ns/shop/sa/ratings"
    assert up.sni == "outbound_.9080_._.ratings.shop.svc.cluster.local"
    assert Upstream("ratings", Endpoint("h", 1), service_account="sa1").principal().endswith(
        "/sa/sa1")
