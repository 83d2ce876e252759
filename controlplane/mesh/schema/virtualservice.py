"""``VirtualService`` spec (istio/api networking/v1alpha3 virtual_service.proto): HTTP routes.

Supported: matches on uri, method, headers and queryParams (plus the match's ``name`` and
``port``); weighted routes to hosts and subsets; redirect, rewrite, timeout, retries, fault
(delay and abort) and header manipulation. TCP/TLS routes, delegation, mirroring, CORS and
direct responses are Istio fields we do not implement yet: they fail as "not supported".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from controlplane.mesh.schema.common import (
    Duration,
    ExportTo,
    Percent,
    PortNumber,
    Strict,
    Unsupported,
    unsupported,
)


class StringMatch(Strict):
    """``StringMatch``: exactly one of exact, prefix and regex (RE2 syntax)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> StringMatch:
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) != 1:
            raise ValueError("set exactly one of exact, prefix and regex")
        return self


class HTTPMatchRequest(Strict):
    """``HTTPMatchRequest``: every condition set must hold."""

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: dict[str, StringMatch] = {}
    query_params: dict[str, StringMatch] = Field({}, alias="queryParams")
    port: PortNumber | None = None
    scheme: Unsupported = unsupported("scheme")
    authority: Unsupported = unsupported("authority")
    source_labels: Unsupported = unsupported("sourceLabels")
    gateways: Unsupported = unsupported("gateways")
    ignore_uri_case: Unsupported = unsupported("ignoreUriCase")
    without_headers: Unsupported = unsupported("withoutHeaders")
    source_namespace: Unsupported = unsupported("sourceNamespace")
    stat_prefix: Unsupported = unsupported("statPrefix")


class PortSelector(Strict):
    """``PortSelector``."""

    number: PortNumber


class Destination(Strict):
    """``Destination``: a service host, optionally one subset and one port of it."""

    host: str = Field(min_length=1)
    subset: str = ""
    port: PortSelector | None = None


class HeaderOperations(Strict):
    """``Headers.HeaderOperations``."""

    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class Headers(Strict):
    """``Headers``: request and response manipulation."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(Strict):
    """``HTTPRouteDestination``: one weighted destination."""

    destination: Destination
    weight: int = Field(0, ge=0)
    headers: Headers | None = None


class HTTPRedirect(Strict):
    """``HTTPRedirect``."""

    uri: str = ""
    authority: str = ""
    port: PortNumber | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = Field(
        None, alias="derivePort")
    scheme: str = ""
    redirect_code: int = Field(301, alias="redirectCode", ge=300, le=399)
    prefix_rewrite: str = Field("", alias="prefixRewrite")

    @model_validator(mode="after")
    def _port_or_derive(self) -> HTTPRedirect:
        if self.port is not None and self.derive_port is not None:
            raise ValueError("set only one of port and derivePort")
        return self


class RegexRewrite(Strict):
    """``RegexRewrite``."""

    match: str = Field(min_length=1)
    rewrite: str


class HTTPRewrite(Strict):
    """``HTTPRewrite``."""

    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = Field(None, alias="uriRegexRewrite")

    @model_validator(mode="after")
    def _uri_or_regex(self) -> HTTPRewrite:
        if self.uri and self.uri_regex_rewrite is not None:
            raise ValueError("set only one of uri and uriRegexRewrite")
        return self


class HTTPRetry(Strict):
    """``HTTPRetry``."""

    attempts: int = Field(ge=0)
    per_try_timeout: Duration | None = Field(None, alias="perTryTimeout")
    retry_on: str = Field("", alias="retryOn")
    backoff: Duration | None = None
    retry_remote_localities: Unsupported = unsupported("retryRemoteLocalities")
    retry_ignore_previous_hosts: Unsupported = unsupported("retryIgnorePreviousHosts")


class Delay(Strict):
    """``HTTPFaultInjection.Delay``: a fixed delay for a percentage of requests."""

    fixed_delay: Duration = Field(alias="fixedDelay")
    percentage: Percent | None = None
    percent: Unsupported = unsupported("percent")  # deprecated in Istio: use percentage
    exponential_delay: Unsupported = unsupported("exponentialDelay")


class Abort(Strict):
    """``HTTPFaultInjection.Abort``: an HTTP or gRPC status for a percentage of requests."""

    http_status: int | None = Field(None, alias="httpStatus", ge=200, le=599)
    grpc_status: str | None = Field(None, alias="grpcStatus")
    percentage: Percent | None = None
    http2_error: Unsupported = unsupported("http2Error")

    @model_validator(mode="after")
    def _one_status(self) -> Abort:
        if (self.http_status is None) == (self.grpc_status is None):
            raise ValueError("set exactly one of httpStatus and grpcStatus")
        return self


class HTTPFaultInjection(Strict):
    """``HTTPFaultInjection``."""

    delay: Delay | None = None
    abort: Abort | None = None


class HTTPRoute(Strict):
    """``HTTPRoute``: the first route whose match holds handles the request."""

    name: str = ""
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []
    redirect: HTTPRedirect | None = None
    rewrite: HTTPRewrite | None = None
    timeout: Duration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    headers: Headers | None = None
    direct_response: Unsupported = unsupported("directResponse")
    delegate: Unsupported = unsupported("delegate")
    mirror: Unsupported = unsupported("mirror")
    mirrors: Unsupported = unsupported("mirrors")
    mirror_percent: Unsupported = unsupported("mirrorPercent")
    mirror_percentage: Unsupported = unsupported("mirrorPercentage")
    cors_policy: Unsupported = unsupported("corsPolicy")

    @model_validator(mode="after")
    def _route_or_redirect(self) -> HTTPRoute:
        if self.redirect is not None and self.route:
            raise ValueError("set only one of route and redirect")
        if self.redirect is None and not self.route:
            raise ValueError("a route needs route or redirect")
        if self.redirect is not None and self.rewrite is not None:
            raise ValueError("rewrite cannot be used with redirect")
        return self


class VirtualServiceSpec(Strict):
    """``VirtualService.spec``."""

    hosts: list[str] = Field(min_length=1)
    gateways: list[str] = []
    http: list[HTTPRoute] = []
    tls: Unsupported = unsupported("tls")
    tcp: Unsupported = unsupported("tcp")
    export_to: ExportTo = Field(None, alias="exportTo")
