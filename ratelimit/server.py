"""The gRPC servicer for ``envoy.service.ratelimit.v3.RateLimitService``: protobuf <-> domain.

Errors map to status codes here and only here: an empty domain or descriptor list ->
INVALID_ARGUMENT; no config loaded yet or the counter backend down/slow -> UNAVAILABLE (Envoy's
``failure_mode_deny`` then decides whether the request passes).
"""

from __future__ import annotations

import logging
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2  # type: ignore[import-untyped]

from envoy_mixer.logs import log_event
from envoy_mixer.snapshot import NotLoadedError, Snapshot
from ratelimit.config import UNIT_SECONDS, Limit, RateLimitConfig
from ratelimit.errors import BackendError, InvalidRequestError
from ratelimit.limiter import Code, Decision, Descriptor, Limiter, Request
from ratelimit.metrics import RateLimitMetrics

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"

_log = logging.getLogger("ratelimit.server")

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
        hits = desc.hits_addend.value if desc.HasField("hits_addend") else None
        override = None
        if desc.HasField("limit"):
            unit = _OVERRIDE_UNITS.get(desc.limit.unit)
            if unit is not None:
                override = Limit(unit=unit, requests_per_unit=desc.limit.requests_per_unit)
        descriptors.append(Descriptor(
            entries=tuple((e.key, e.value) for e in desc.entries),
            hits_addend=hits,
            override=override,
        ))
    return Request(
        domain=message.domain, descriptors=tuple(descriptors), hits_addend=message.hits_addend
    )


def to_response(decision: Decision) -> rls_pb2.RateLimitResponse:
    """The RateLimitResponse for a decision (statuses in request order)."""
    statuses = []
    for status in decision.statuses:
        item = rls_pb2.RateLimitResponse.DescriptorStatus(
            code=int(status.code), limit_remaining=status.remaining
        )
        if status.limit is not None:
            lim = status.limit
            item.current_limit.requests_per_unit = lim.requests_per_unit
            item.current_limit.unit = _UNIT_TO_PROTO[lim.unit]
            if lim.name:
                item.current_limit.name = lim.name
        if status.reset_seconds is not None:
            item.duration_until_reset.CopyFrom(duration_pb2.Duration(seconds=status.reset_seconds))
        statuses.append(item)
    response = rls_pb2.RateLimitResponse(overall_code=int(decision.overall), statuses=statuses)
    for key, value in decision.headers:
        response.response_headers_to_add.append(base_pb2.HeaderValue(key=key, value=value))
    return response


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """ShouldRateLimit over the current config snapshot and the limiter."""

    def __init__(
        self, limiter: Limiter, snapshot: Snapshot[RateLimitConfig], metrics: RateLimitMetrics
    ) -> None:
        self.limiter = limiter
        self.snapshot = snapshot
        self.metrics = metrics

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        """Decide one request; errors become gRPC status codes."""
        started = time.perf_counter()
        metrics = self.metrics
        try:
            decision = await self.limiter.decide(self.snapshot.get(), to_request(request))
        except InvalidRequestError as exc:
            metrics.call_errors.labels("invalid_argument").inc()
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
        finally:
            metrics.latency.observe(time.perf_counter() - started)
        metrics.record(request.domain, decision)
        if decision.overall is Code.OVER_LIMIT and _log.isEnabledFor(logging.DEBUG):
            log_event(_log, "over_limit", logging.DEBUG, domain=request.domain)
        return to_response(decision)


def register(server: grpc.aio.Server, servicer: RateLimitServicer) -> None:
    """Add the servicer to a grpc.aio server."""
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
