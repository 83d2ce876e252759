"""controlplane.envoy.routes: the health route, forwarding, peer headers, virtual hosts."""

from __future__ import annotations

import base64
import json

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthzPerRoute

from controlplane.envoy.filters import authz_disabled
from controlplane.envoy.model import Workload
from controlplane.envoy.ratelimit_actions import action_for
from controlplane.envoy.routes import (
    forward_route,
    health_route,
    not_found_route,
    peer_headers,
    route_configuration,
    virtual_host,
)

FRONTEND = Workload("frontend")


def _authz(settings: object) -> ExtAuthzPerRoute:
    out = ExtAuthzPerRoute()
    assert settings.Unpack(out)  # type: ignore[attr-defined]
    return out


def test_health_route_answers_itself_without_policy() -> None:
    """/healthz/ready gets a direct 200 "ok" and ext_authz is disabled on it."""
    route = health_route()
    assert route.match.path == "/healthz/ready"
    assert route.direct_response.status == 200
    assert route.direct_response.body.inline_string == "ok"
    assert _authz(route.typed_per_filter_config["envoy.filters.http.ext_authz"]).disabled


def test_forward_route_sends_every_path_to_the_cluster() -> None:
    """Prefix / to the cluster with the timeout; Host is rewritten only when asked."""
    route = forward_route("backend", "outbound|8080||backend.default.svc.cluster.local", "15s",
                          host_rewrite="backend.default.svc.cluster.local")
    assert route.match.prefix == "/"
    assert route.route.cluster == "outbound|8080||backend.default.svc.cluster.local"
    assert route.route.timeout.seconds == 15
    assert route.route.host_rewrite_literal == "backend.default.svc.cluster.local"
    assert not forward_route("in", "inbound|8080||", "15s").route.host_rewrite_literal


def test_not_found_route_is_a_direct_404() -> None:
    """The catch-all answers 404 with the body."""
    route = not_found_route("unknown", "no upstream\n")
    assert route.direct_response.status == 404
    assert route.direct_response.body.inline_string == "no upstream\n"


def test_peer_headers_decode_to_the_workload_identity() -> None:
    """The metadata header is base64 JSON of the node metadata; the id header is the node id."""
    headers = peer_headers(FRONTEND, "sidecar")
    assert all(h.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD for h in headers)
    values = {h.header.key: h.header.value for h in headers}
    meta = json.loads(base64.b64decode(values["x-mixer-peer-metadata"]))
    assert meta["WORKLOAD_NAME"] == "frontend" and meta["NAMESPACE"] == "default"
    assert values["x-mixer-peer-metadata-id"] == FRONTEND.node_id("sidecar")


def test_virtual_host_carries_authz_rate_limits_and_headers() -> None:
    """A virtual host gets its ext_authz settings, one rate_limits entry per actions list."""
    actions = ((action_for("remote_address", None),),)
    vhost = virtual_host("ingress", ["*"], [health_route()], authz=authz_disabled(),
                         rate_limits=actions, request_headers=peer_headers(FRONTEND, "router"))
    assert list(vhost.domains) == ["*"] and vhost.routes[0].name == "health"
    assert _authz(vhost.typed_per_filter_config["envoy.filters.http.ext_authz"]).disabled
    assert len(vhost.rate_limits) == 1
    assert vhost.rate_limits[0].actions[0].HasField("remote_address")
    assert len(vhost.request_headers_to_add) == 2 and not vhost.response_headers_to_add
    table = route_configuration("ingress", [vhost])
    assert table.name == "ingress" and table.virtual_hosts[0] == vhost
