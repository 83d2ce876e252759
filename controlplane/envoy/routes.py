"""Routes and virtual hosts: the health route, proxied routes, peer-metadata headers.

Per-filter settings are keyed by filter name in ``typed_per_filter_config``; here that is only
ext_authz (the workload identity, or disabled where no policy should run).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.route.v3.route_components_pb2 import Route, RouteAction, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthzPerRoute

from controlplane.envoy.core import duration, pack
from controlplane.envoy.filters import EXT_AUTHZ, authz_disabled
from controlplane.envoy.model import (
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    Workload,
)
from controlplane.envoy.ratelimit_actions import Actions, rate_limits_block

HEALTH_PATH = "/healthz/ready"


def peer_headers(workload: Workload, proxy_type: str) -> list[HeaderValueOption]:
    """Header values announcing ``workload``'s identity to the peer (metadata exchange)."""
    return [
        HeaderValueOption(header={"key": key, "value": value},
                          append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
        for key, value in ((PEER_METADATA_HEADER, workload.peer_metadata_header()),
                           (PEER_METADATA_ID_HEADER, workload.node_id(proxy_type)))
    ]


def with_authz(target: Route | VirtualHost, settings: ExtAuthzPerRoute) -> None:
    """Set ``target``'s per-route ext_authz settings."""
    target.typed_per_filter_config[EXT_AUTHZ].CopyFrom(pack(settings))


def health_route() -> Route:
    """``/healthz/ready`` answered by Envoy itself, with ext_authz disabled."""
    route = Route(name="health")
    route.match.path = HEALTH_PATH
    route.direct_response.status = 200
    route.direct_response.body.inline_string = "ok"
    with_authz(route, authz_disabled())
    return route


def forward_route(name: str, cluster: str, timeout: str, *,
                  host_rewrite: str | None = None) -> Route:
    """Every path (prefix ``/``) to ``cluster``, optionally rewriting ``Host``."""
    action = RouteAction(cluster=cluster, timeout=duration(timeout))
    if host_rewrite is not None:
        action.host_rewrite_literal = host_rewrite
    route = Route(name=name, route=action)
    route.match.prefix = "/"
    return route


def not_found_route(name: str, body: str) -> Route:
    """Every path answered 404 by Envoy itself, with ``body``."""
    route = Route(name=name)
    route.match.prefix = "/"
    route.direct_response.status = 404
    route.direct_response.body.inline_string = body
    return route


def virtual_host(
    name: str, domains: Sequence[str], routes: Sequence[Route], *,
    authz: ExtAuthzPerRoute, rate_limits: Sequence[Actions] = (),
    request_headers: Sequence[HeaderValueOption] = (),
    response_headers: Sequence[HeaderValueOption] = (),
) -> VirtualHost:
    """A virtual host with its ext_authz settings, rate limits and added headers."""
    vhost = VirtualHost(
        name=name, domains=domains, routes=routes, rate_limits=rate_limits_block(rate_limits),
        request_headers_to_add=request_headers, response_headers_to_add=response_headers,
    )
    with_authz(vhost, authz)
    return vhost


def route_configuration(name: str, virtual_hosts: Sequence[VirtualHost]) -> RouteConfiguration:
    """A named route table (inline in the HCM today; served over RDS by an xDS server)."""
    return RouteConfiguration(name=name, virtual_hosts=virtual_hosts)
