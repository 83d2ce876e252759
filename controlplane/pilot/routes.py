"""VirtualService ``http[]`` -> Envoy routes (match, destinations, redirect, rewrite, retries,
timeout, fault, headers).

One Envoy route per ``match`` entry (a route without matches matches every path), in file
order, as Istio does. Destinations become ``outbound|PORT|SUBSET|HOST`` clusters; several make
a weighted cluster. The Host is rewritten to the destination's host (unless the rule rewrites
the authority itself), as the static configs do, so the server-side telemetry names the same
``destination_service``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.route.v3.route_components_pb2 import (
    HeaderMatcher,
    QueryParameterMatcher,
    RedirectAction,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    WeightedCluster,
)
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.duration_pb2 import Duration

from controlplane.envoy.core import pack
from controlplane.mesh.model import (
    ConsistentHash,
    Destination,
    Fault,
    HeaderOperations,
    HttpMatch,
    HttpRoute,
    StringMatch,
)

__all__ = ["FAULT_FILTER", "ClusterFor", "HashFor", "hash_policies", "http_routes"]

FAULT_FILTER = "envoy.filters.http.fault"
#: Istio's default ``retryOn`` (and 2 attempts) when a route sets none.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_REDIRECT_CODES = {301: RedirectAction.MOVED_PERMANENTLY, 302: RedirectAction.FOUND,
                   303: RedirectAction.SEE_OTHER, 307: RedirectAction.TEMPORARY_REDIRECT,
                   308: RedirectAction.PERMANENT_REDIRECT}
_GRPC_CODES = {"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3,
               "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
               "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
               "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13,
               "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}

#: Names the cluster of a destination (the port filled in when the rule leaves it out).
ClusterFor = Callable[[Destination], str]
#: The DestinationRule's consistent-hash key for a destination, if it has one.
HashFor = Callable[[Destination], ConsistentHash | None]


def hash_policies(key: ConsistentHash) -> list[RouteAction.HashPolicy]:
    """The route's ``hash_policy`` for a DestinationRule ``consistentHash`` (the cluster's
    RING_HASH/MAGLEV only balances by a key the route computes)."""
    policy = RouteAction.HashPolicy()
    if key.http_header_name is not None:
        policy.header.header_name = key.http_header_name
    elif key.http_cookie is not None:
        policy.cookie.name = key.http_cookie.name
        policy.cookie.path = key.http_cookie.path
        if key.http_cookie.ttl is not None:
            policy.cookie.ttl.CopyFrom(_duration(key.http_cookie.ttl))
    elif key.use_source_ip:
        policy.connection_properties.source_ip = True
    elif key.http_query_parameter_name is not None:
        policy.query_parameter.name = key.http_query_parameter_name
    else:
        return []
    return [policy]


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def _string_matcher(match: StringMatch) -> StringMatcher:
    if match.kind == "exact":
        return StringMatcher(exact=match.value)
    if match.kind == "prefix":
        return StringMatcher(prefix=match.value)
    return StringMatcher(safe_regex={"regex": match.value})


def _route_match(match: HttpMatch | None) -> RouteMatch:
    out = RouteMatch()
    if match is None or match.uri is None:
        out.prefix = "/"
    elif match.uri.kind == "exact":
        out.path = match.uri.value
    elif match.uri.kind == "prefix":
        out.prefix = match.uri.value
    else:
        out.safe_regex.regex = match.uri.value
    if match is None:
        return out
    if match.method is not None:
        out.headers.append(HeaderMatcher(name=":method",
                                         string_match=_string_matcher(match.method)))
    for name, value in match.headers:
        out.headers.append(HeaderMatcher(name=name, string_match=_string_matcher(value)))
    for name, value in match.query_params:
        out.query_parameters.append(QueryParameterMatcher(
            name=name, string_match=_string_matcher(value)))
    return out


def _header_options(ops: HeaderOperations) -> list[HeaderValueOption]:
    out = [HeaderValueOption(header={"key": k, "value": v},
                             append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)
           for k, v in ops.set]
    out += [HeaderValueOption(header={"key": k, "value": v},
                              append_action=HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)
            for k, v in ops.add]
    return out


def _percent(value: float | None) -> FractionalPercent:
    # Istio's percentages are doubles; a million-based fraction keeps 4 decimals.
    share = 100.0 if value is None else value
    return FractionalPercent(numerator=round(share * 10000),
                             denominator=FractionalPercent.MILLION)


def _fault(fault: Fault) -> HTTPFault:
    out = HTTPFault()
    if fault.delay is not None:
        out.delay.fixed_delay.CopyFrom(_duration(fault.delay.fixed_delay))
        out.delay.percentage.CopyFrom(_percent(fault.delay.percentage))
    if fault.abort is not None:
        if fault.abort.http_status is not None:
            out.abort.http_status = fault.abort.http_status
        elif fault.abort.grpc_status is not None:
            out.abort.grpc_status = _GRPC_CODES.get(fault.abort.grpc_status, 2)
        out.abort.percentage.CopyFrom(_percent(fault.abort.percentage))
    return out


def _action(http: HttpRoute, cluster_for: ClusterFor, default_timeout: float,
            hash_for: HashFor | None) -> RouteAction:
    action = RouteAction()
    rewrite_authority = http.rewrite.authority if http.rewrite else ""
    if len(http.route) == 1:
        only = http.route[0]
        action.cluster = cluster_for(only.destination)
        key = hash_for(only.destination) if hash_for is not None else None
        if key is not None:
            action.hash_policy.extend(hash_policies(key))
        if not rewrite_authority:
            action.host_rewrite_literal = only.destination.host
    else:
        total = sum(d.weight for d in http.route)
        for weighted in http.route:
            entry = WeightedCluster.ClusterWeight(name=cluster_for(weighted.destination))
            entry.weight.value = weighted.weight if total else 1
            if not rewrite_authority:
                entry.host_rewrite_literal = weighted.destination.host
            if weighted.headers is not None:
                entry.request_headers_to_add.extend(_header_options(weighted.headers.request))
                entry.request_headers_to_remove.extend(weighted.headers.request.remove)
                entry.response_headers_to_add.extend(_header_options(weighted.headers.response))
                entry.response_headers_to_remove.extend(weighted.headers.response.remove)
            action.weighted_clusters.clusters.append(entry)
    if http.rewrite is not None:
        if http.rewrite.uri:
            action.prefix_rewrite = http.rewrite.uri
        elif http.rewrite.uri_regex_rewrite is not None:
            action.regex_rewrite.pattern.regex = http.rewrite.uri_regex_rewrite.match
            action.regex_rewrite.substitution = http.rewrite.uri_regex_rewrite.rewrite
        if rewrite_authority:
            action.host_rewrite_literal = rewrite_authority
    action.timeout.CopyFrom(_duration(http.timeout if http.timeout is not None
                                      else default_timeout))
    retry = RetryPolicy(retry_on=DEFAULT_RETRY_ON)
    retry.num_retries.value = 2
    if http.retries is not None:
        retry.num_retries.value = http.retries.attempts
        if http.retries.retry_on:
            retry.retry_on = http.retries.retry_on
        if http.retries.per_try_timeout is not None:
            retry.per_try_timeout.CopyFrom(_duration(http.retries.per_try_timeout))
        if http.retries.backoff is not None:
            retry.retry_back_off.base_interval.CopyFrom(_duration(http.retries.backoff))
    if retry.num_retries.value:
        action.retry_policy.CopyFrom(retry)
    return action


def _redirect(http: HttpRoute) -> RedirectAction:
    assert http.redirect is not None
    r = http.redirect
    out = RedirectAction(response_code=_REDIRECT_CODES.get(r.redirect_code,
                                                           RedirectAction.MOVED_PERMANENTLY))
    if r.uri:
        out.path_redirect = r.uri
    elif r.prefix_rewrite:
        out.prefix_rewrite = r.prefix_rewrite
    if r.authority:
        out.host_redirect = r.authority
    if r.port is not None:
        out.port_redirect = r.port
    if r.scheme:
        out.scheme_redirect = r.scheme
    return out


def http_routes(routes: Sequence[HttpRoute], cluster_for: ClusterFor, *, port: int,
                default_timeout: float, hash_for: HashFor | None = None) -> list[Route]:
    """The Envoy routes of a VirtualService's ``http[]`` for a listener/service ``port``.

    A match entry naming another ``port`` is left out. ``hash_for`` gives a single
    destination's consistent-hash key (a weighted route has none, as in Istio).
    """
    out: list[Route] = []
    for index, http in enumerate(routes):
        matches: Sequence[HttpMatch | None] = http.match or (None,)
        for match in matches:
            if match is not None and match.port is not None and match.port != port:
                continue
            route = Route(name=http.name or f"route-{index}", match=_route_match(match))
            if http.redirect is not None:
                route.redirect.CopyFrom(_redirect(http))
            else:
                route.route.CopyFrom(_action(http, cluster_for, default_timeout, hash_for))
            if http.fault is not None:
                route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(_fault(http.fault)))
            if http.headers is not None:
                route.request_headers_to_add.extend(_header_options(http.headers.request))
                route.request_headers_to_remove.extend(http.headers.request.remove)
                route.response_headers_to_add.extend(_header_options(http.headers.response))
                route.response_headers_to_remove.extend(http.headers.response.remove)
            out.append(route)
    return out
