"""The gRPC servicer for ``envoy.service.ratelimit.v3.RateLimitService``: protobuf <-> domain.

Errors map to status codes here and only here: an empty domain or descriptor list ->
INVALID_ARGUMENT (counted as ``service_error``, as the reference counts it); bytes that are not
a RateLimitRequest -> INVALID_ARGUMENT (``invalid_argument``); no config loaded yet or the
counter backend down/slow -> UNAVAILABLE (Envoy's
``failure_mode_deny`` then decides whether the request passes).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2, json_format, struct_pb2

from envoy_mixer.common.logs import log_event
from envoy_mixer.common.snapshot import NotLoadedError, Snapshot
from ratelimit.config import UNIT_SECONDS, Limit, RateLimitConfig
from ratelimit.errors import BackendError, InvalidRequestError
from ratelimit.limiter import Code, Decision, Descriptor, Limiter, Request
from ratelimit.metrics import RateLimitMetrics
from ratelimit.wire import WireError, decode_request, encode_response

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"

_log = logging.getLogger("ratelimit.server")

# Bound of the request-bytes -> decoded Request cache.
_DECODED_CACHE = 10_000

_Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
_UNIT_TO_PROTO = {
    "second": _Unit.SECOND, "minute": _Unit.MINUTE, "hour": _Unit.HOUR, "day": _Unit.DAY,
    "week": _Unit.WEEK, "month": _Unit.MONTH, "year": _Unit.YEAR,
}
# envoy.type.v3.RateLimitUnit (the override's enum) numbers: no WEEK there.
_OVERRIDE_UNITS = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year"}
assert set(_UNIT_TO_PROTO) == set(UNIT_SECONDS)


def to_request(message: rls_pb2.RateLimitRequest) -> Request:
    """The domain request for a RateLimitRequest."""
    descriptors = []
    for desc in message.descriptors:
        entries = tuple([(e.key, e.value) for e in desc.entries])
        if desc.HasField("hits_addend") or desc.HasField("limit"):
            hits = desc.hits_addend.value if desc.HasField("hits_addend") else None
            override = None
            if desc.HasField("limit"):
                unit = _OVERRIDE_UNITS.get(desc.limit.unit)
                if unit is not None:
                    override = Limit(unit=unit, requests_per_unit=desc.limit.requests_per_unit)
            descriptors.append(Descriptor(entries, hits, override))
        else:
            descriptors.append(Descriptor(entries))
    return Request(message.domain, tuple(descriptors), message.hits_addend)


_DescriptorStatus = rls_pb2.RateLimitResponse.DescriptorStatus
_RateLimitProto = rls_pb2.RateLimitResponse.RateLimit
_Duration = duration_pb2.Duration


class _ProtoCache:
    """Prebuilt ``current_limit`` messages per configured Limit (built once, copied per call).

    Keyed by ``id()`` with the Limit kept alive in the value, so an id is never reused while
    cached; cleared when it grows past a bound (configs are small; overrides are not).
    """

    def __init__(self) -> None:
        self._limits: dict[int, tuple[Limit, Any]] = {}

    def limit(self, lim: Limit) -> Any:
        hit = self._limits.get(id(lim))
        if hit is not None:
            return hit[1]
        proto = _RateLimitProto(
            name=lim.name, requests_per_unit=lim.requests_per_unit, unit=_UNIT_TO_PROTO[lim.unit]
        )
        if len(self._limits) > 10_000:
            self._limits.clear()
        self._limits[id(lim)] = (lim, proto)
        return proto


_CACHE = _ProtoCache()


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    """The RateLimitResponse for a decision (statuses in request order)."""
    statuses = []
    for code, lim, remaining, reset in decision.statuses:
        if lim is None:
            statuses.append(_DescriptorStatus(code=code, limit_remaining=remaining))
        else:
            statuses.append(_DescriptorStatus(
                code=code, current_limit=_CACHE.limit(lim), limit_remaining=remaining,
                duration_until_reset=_Duration(seconds=reset or 0),
            ))
    response = rls_pb2.RateLimitResponse(overall_code=decision.overall, statuses=statuses)
    for key, value in decision.headers:
        response.response_headers_to_add.append(base_pb2.HeaderValue(key=key, value=value))
    if decision.metadata is not None:
        response.dynamic_metadata.CopyFrom(metadata_struct(decision.metadata))
    return response


def metadata_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    """Dynamic metadata (plain data) as the protobuf Struct Envoy receives."""
    message = struct_pb2.Struct()
    message.update(data)
    return message


class RateLimitServicer:
    """ShouldRateLimit over the current config snapshot and the limiter.

    ``register`` serves ``should_rate_limit_raw`` (bytes in, bytes out through ``wire``);
    ``decide_json`` answers the admin port's ``POST /json`` with the same decision path.
    """

    def __init__(
        self, limiter: Limiter, snapshot: Snapshot[RateLimitConfig], metrics: RateLimitMetrics
    ) -> None:
        self.limiter = limiter
        self.snapshot = snapshot
        self.metrics = metrics
        # Request bytes repeat (the same client hitting the same route): decoded once, and the
        # very same Request then hits the limiter's compiled-request cache. Bounded, cleared
        # whole when full.
        self._decoded: dict[bytes, Request] = {}

    async def should_rate_limit_raw(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        """Decide one serialized request, answer serialized bytes (the served method)."""
        started = time.perf_counter()
        try:
            parsed = self._decoded.get(request)
            if parsed is None:
                try:
                    parsed = decode_request(request)
                except WireError as exc:
                    self.metrics.call_errors.labels("invalid_argument").inc()
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    raise  # unreachable: abort raises
                if len(self._decoded) >= _DECODED_CACHE:
                    self._decoded.clear()
                self._decoded[request] = parsed
            decision = await self._decide(parsed, context)
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)
        return encode_response(decision)

    async def _decide(self, request: Request, context: grpc.aio.ServicerContext) -> Decision:
        metrics = self.metrics
        try:
            decision = await self.limiter.decide(self.snapshot.get(), request)
        except InvalidRequestError as exc:
            # The reference counts these (empty domain, no descriptors) as service errors.
            metrics.call_errors.labels("service_error").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        except NotLoadedError:
            metrics.call_errors.labels("service_error").inc()
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "no rate limit configuration loaded"
            )
            raise
        except BackendError as exc:
            metrics.call_errors.labels("redis_error").inc()
            metrics.backend_errors.labels(self.limiter.backend.name, exc.kind).inc()
            log_event(_log, "backend_error", logging.WARNING, domain=request.domain,
                      kind=exc.kind, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        metrics.record(request.domain, decision)
        if decision.overall is Code.OVER_LIMIT and _log.isEnabledFor(logging.DEBUG):
            log_event(_log, "over_limit", logging.DEBUG, domain=request.domain)
        return decision


class _HttpAbort(Exception):
    """Carries the gRPC status ``_decide`` would have aborted with, for the JSON endpoint."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _HttpContext:
    """Stands in for the gRPC context: ``abort`` raises instead of ending an RPC."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _HttpAbort(code, details)


_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAVAILABLE: 503}


async def decide_json(servicer: RateLimitServicer, body: bytes) -> tuple[int, str]:
    """envoyproxy/ratelimit's ``POST /json``: a proto3-JSON RateLimitRequest in, the response out.

    Answers 200 (OK), 429 (OVER_LIMIT), 400 (bad JSON or invalid request) or 503 (no config
    loaded, backend down). Same decision and metrics as the gRPC method, so operators can probe
    a limit with curl.
    """
    try:
        message = json_format.Parse(body, rls_pb2.RateLimitRequest())
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        return 400, json.dumps({"error": f"invalid RateLimitRequest JSON: {exc}"})
    try:
        decision = await servicer._decide(to_request(message), _HttpContext())
    except _HttpAbort as exc:
        return _HTTP_STATUS.get(exc.code, 500), json.dumps({"error": exc.details})
    status = 429 if decision.overall is Code.OVER_LIMIT else 200
    return status, json_format.MessageToJson(to_response(decision))


def register(server: grpc.aio.Server, servicer: RateLimitServicer) -> None:
    """Serve ShouldRateLimit on a grpc.aio server (raw bytes through ``ratelimit.wire``).

    Registered as well as generic, like the generated ``add_..._to_server``: a registered
    method is matched by gRPC core instead of by a Python lookup per call.
    """
    handlers = {
        "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(
            servicer.should_rate_limit_raw, request_deserializer=None, response_serializer=None,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
