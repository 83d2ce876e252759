"""The gRPC servicer in-process on a free port, with a real stub, admin HTTP and reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import ratelimit_unit_pb2
from google.protobuf import wrappers_pb2

from envoy_mixer.dev import procs
from envoy_mixer.runtime.service import RunningService, start
from envoy_mixer.runtime.settings import ServerSettings
from ratelimit.app import RateLimitApp, RateLimitSettings, build
from ratelimit.limiter import LimiterSettings

LIMITS = """\
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: user
    value: bob
    rate_limit: {name: bob_limit, unit: hour, requests_per_unit: 1}
"""

Resp = rls_pb2.RateLimitResponse
Code = Resp.Code


def descriptor(*entries: tuple[str, str], hits: int | None = None,
               limit: tuple[int, int] | None = None) -> Any:
    desc = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        desc.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    if limit is not None:
        desc.limit.requests_per_unit, desc.limit.unit = limit
    return desc


class Harness:
    """A running service plus a stub and an admin base URL."""

    def __init__(self, app: RateLimitApp, running: RunningService, path: Path) -> None:
        self.app = app
        self.running = running
        self.path = path
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        self.admin = f"http://127.0.0.1:{running.admin_port}"

    async def call(self, domain: str, *descriptors: Any, hits_addend: int = 0) -> Any:
        return await self.stub.ShouldRateLimit(rls_pb2.RateLimitRequest(
            domain=domain, descriptors=list(descriptors), hits_addend=hits_addend
        ), timeout=5)

    async def get(self, path: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.admin + path) as resp:
            return await resp.text()

    def metric(self, text: str, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        line_start = f"{name}{{{want}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
        raise AssertionError(f"{line_start!r} not in metrics")


StartFn = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[StartFn]:
    """Start the service in-process with limits text and settings; stopped at teardown."""
    started: list[Harness] = []

    async def go(limits: str | None = LIMITS, **kwargs: Any) -> Harness:
        path = tmp_path / "limits"
        path.mkdir(exist_ok=True)
        if limits is not None:
            (path / "edge.yaml").write_text(limits)
        limiter = kwargs.pop("limiter", LimiterSettings())
        settings = RateLimitSettings(config=path, reload_interval=0.1, limiter=limiter, **kwargs)
        app = build(settings)
        running = await start(app.service, ServerSettings(
            service="ratelimit", listen="127.0.0.1:0", admin="127.0.0.1:0"
        ))
        harness = Harness(app, running, path)
        started.append(harness)
        return harness

    yield go
    for h in started:
        await h.channel.close()
        await h.running.stop(0)


async def test_statuses_and_limits(serve: StartFn) -> None:
    """Statuses in order with current_limit, remaining and reset; OVER_LIMIT when any is over."""
    h = await serve()
    resp = await h.call("edge", descriptor(("remote_address", "10.0.0.1")),
                        descriptor(("user", "bob")), descriptor(("user", "alice")))
    assert resp.overall_code == Code.OK
    first, second, third = resp.statuses
    assert (first.code, first.limit_remaining) == (Code.OK, 2)
    assert first.current_limit.requests_per_unit == 3
    assert first.current_limit.unit == Resp.RateLimit.Unit.MINUTE
    assert 0 < first.duration_until_reset.seconds <= 60
    assert second.current_limit.name == "bob_limit" and second.limit_remaining == 0
    assert not third.HasField("current_limit")
    resp = await h.call("edge", descriptor(("remote_address", "10.0.0.1")),
                        descriptor(("user", "bob")))
    assert resp.overall_code == Code.OVER_LIMIT
    assert [s.code for s in resp.statuses] == [Code.OK, Code.OVER_LIMIT]


async def test_addends_and_override(serve: StartFn) -> None:
    """Request and descriptor hits_addend and Envoy's limit override reach the limiter."""
    h = await serve()
    resp = await h.call("edge", descriptor(("remote_address", "a")), hits_addend=2)
    assert resp.statuses[0].limit_remaining == 1
    resp = await h.call("edge", descriptor(("remote_address", "a"), hits=0), hits_addend=2)
    assert resp.statuses[0].limit_remaining == 1
    resp = await h.call("edge", descriptor(("remote_address", "b"),
                                           limit=(10, ratelimit_unit_pb2.RateLimitUnit.SECOND)))
    assert resp.statuses[0].current_limit.requests_per_unit == 10
    assert resp.statuses[0].current_limit.unit == Resp.RateLimit.Unit.SECOND


@pytest.mark.parametrize(("request_", "message"), [
    (rls_pb2.RateLimitRequest(domain="", descriptors=[descriptor(("a", "b"))]),
     "rate limit domain must not be empty"),
    (rls_pb2.RateLimitRequest(domain="edge"), "rate limit descriptor list must not be empty"),
])
async def test_invalid_argument(serve: StartFn, request_: Any, message: str) -> None:
    """Empty domain or descriptor list -> INVALID_ARGUMENT, counted as a service_error."""
    h = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.stub.ShouldRateLimit(request_, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message
    assert h.app.registry.get_sample_value(
        "ratelimit_service_should_rate_limit_error_total", {"err_type": "service_error"}) == 1
    # The service keeps serving.
    assert (await h.call("edge", descriptor(("x", "y")))).overall_code == Code.OK


async def test_unknown_domain_and_empty_entries(serve: StartFn) -> None:
    """Unknown domain and a descriptor without entries both answer OK with no limit."""
    h = await serve()
    resp = await h.call("nope", descriptor(("hello", "world")))
    assert resp.overall_code == Code.OK and resp.statuses[0].limit_remaining == 0
    resp = await h.call("edge", ratelimit_pb2.RateLimitDescriptor())
    assert resp.overall_code == Code.OK and len(resp.statuses) == 1


async def test_service_headers_and_global_shadow(serve: StartFn) -> None:
    """Opt-in RateLimit-* headers; global shadow mode answers OK while over."""
    h = await serve(limiter=LimiterSettings(response_headers=True, shadow_mode=True))
    for _ in range(4):
        resp = await h.call("edge", descriptor(("remote_address", "c")))
    assert resp.overall_code == Code.OK
    assert resp.statuses[0].code == Code.OVER_LIMIT
    headers = {hv.key: hv.value for hv in resp.response_headers_to_add}
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Remaining"] == "0"
    assert 0 < int(headers["RateLimit-Reset"]) <= 60
    metrics = await h.get("/metrics")
    assert h.metric(metrics, "ratelimit_service_global_shadow_mode_total") == 1


async def test_metrics(serve: StartFn) -> None:
    """Per-rule counters, config loads and the latency histogram appear on /metrics."""
    h = await serve()
    for _ in range(4):
        await h.call("edge", descriptor(("remote_address", "1.2.3.4")))
    await h.call("other", descriptor(("a", "b")))
    text = await h.get("/metrics")
    labels = {"domain": "edge", "key": "remote_address"}
    assert h.metric(text, "ratelimit_service_rate_limit_total_hits_total", **labels) == 4
    assert h.metric(text, "ratelimit_service_rate_limit_within_limit_total", **labels) == 3
    assert h.metric(text, "ratelimit_service_rate_limit_over_limit_total", **labels) == 1
    assert h.metric(text, "ratelimit_service_rate_limit_near_limit_total", **labels) == 1
    assert h.metric(text, "ratelimit_service_rate_limit_domain_not_found_total",
                    domain="other") == 1
    assert h.metric(text, "ratelimit_service_config_load_success_total") == 1
    assert h.metric(text, "ratelimit_service_response_time_seconds_count") == 5
    assert "1.2.3.4" not in text  # no raw values without detailed_metric


async def test_reload_good_then_bad(serve: StartFn) -> None:
    """A good change applies; a bad one keeps the old config and counts the error."""
    h = await serve()
    (h.path / "edge.yaml").write_text(LIMITS.replace("per_unit: 3", "per_unit: 7"))
    loads = h.app.registry.get_sample_value
    await _until(lambda: loads("ratelimit_service_config_load_success_total") == 2)
    resp = await h.call("edge", descriptor(("remote_address", "r")))
    assert resp.statuses[0].current_limit.requests_per_unit == 7
    (h.path / "edge.yaml").write_text(LIMITS.replace("unit: minute", "unit: fortnight"))
    await _until(lambda: loads("ratelimit_service_config_load_error_total") == 1)
    resp = await h.call("edge", descriptor(("remote_address", "r")))
    assert resp.statuses[0].current_limit.requests_per_unit == 7
    text = await h.get("/metrics")
    assert h.metric(text, "ratelimit_service_config_load_error_total") == 1
    assert "invalid rate limit unit 'fortnight'" in await h.get("/config")


async def test_no_config_yet_is_unavailable(serve: StartFn) -> None:
    """Before a first good config, calls answer UNAVAILABLE and /healthz is 503."""
    h = await serve(limits="domain: edge\ndescriptors: [1]\n")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.call("edge", descriptor(("a", "b")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no rate limit configuration loaded" in (info.value.details() or "")
    async with aiohttp.ClientSession() as session, session.get(h.admin + "/healthz") as resp:
        assert resp.status == 503


async def test_redis_unreachable_is_unavailable(serve: StartFn) -> None:
    """Redis down -> UNAVAILABLE within the timeout, counted as redis_error."""
    port = procs.free_port()
    h = await serve(backend="redis", redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.2)
    # The 0.2 s Redis timeout answers long before this generous bound on a hang.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(10):
            await h.call("edge", descriptor(("remote_address", "z")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    text = await h.get("/metrics")
    assert h.metric(text, "ratelimit_service_should_rate_limit_error_total",
                    err_type="redis_error") == 1
    assert h.metric(text, "ratelimit_backend_errors_total", backend="redis",
                    kind="connection") == 1
    # Descriptors that need no counter do not touch Redis and still answer.
    assert (await h.call("edge", descriptor(("nothing", "x")))).overall_code == Code.OK


async def test_rlconfig(serve: StartFn) -> None:
    """/rlconfig lists one line per limit."""
    h = await serve()
    text = await h.get("/rlconfig")
    assert "edge.remote_address: unit=MINUTE requests_per_unit=3" in text
    assert "edge.user_bob: unit=HOUR requests_per_unit=1" in text


async def test_json_endpoint(serve: StartFn) -> None:
    """POST /json answers like envoyproxy/ratelimit's: 200, then 429 over the limit, 400 on junk."""
    h = await serve()
    body = json.dumps({"domain": "edge", "descriptors": [
        {"entries": [{"key": "remote_address", "value": "10.0.0.1"}]}]})
    async with aiohttp.ClientSession() as session:
        codes = []
        for _ in range(4):
            async with session.post(h.admin + "/json", data=body) as resp:
                codes.append(resp.status)
                answer = await resp.json()
        assert codes == [200, 200, 200, 429]
        assert answer["overallCode"] == "OVER_LIMIT"
        assert answer["statuses"][0]["currentLimit"] == {"requestsPerUnit": 3, "unit": "MINUTE"}
        async with session.post(h.admin + "/json", data="{not json") as resp:
            assert resp.status == 400
            assert "invalid RateLimitRequest JSON" in (await resp.json())["error"]
        async with session.post(h.admin + "/json", data=json.dumps({"domain": ""})) as resp:
            assert resp.status == 400
            assert "domain" in (await resp.json())["error"]


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(100):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met within 5 s")



async def test_malformed_bytes_are_invalid_argument(serve: StartFn) -> None:
    """Bytes that are not a RateLimitRequest get INVALID_ARGUMENT, and serving continues."""
    h = await serve()
    raw = h.channel.unary_unary(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        request_serializer=None, response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\x0a\x05ab", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await h.call("edge", descriptor(("x", "y")))).overall_code == Code.OK


async def test_redis_outage_and_recovery(serve: StartFn, own_redis: Any) -> None:
    """Redis stopped: UNAVAILABLE within the timeout, health 503; restarted: serving again."""
    proc = own_redis()
    h = await serve(backend="redis", redis_url=f"redis://127.0.0.1:{own_redis.port}/0",
                    redis_timeout=0.2)
    assert (await h.call("edge", descriptor(("remote_address", "q")))).overall_code == Code.OK
    proc.stop()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(10):  # generous: the 0.2 s Redis timeout answers first
            await h.call("edge", descriptor(("remote_address", "q")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with aiohttp.ClientSession() as session, session.get(h.admin + "/healthz") as resp:
        assert resp.status == 503
    own_redis()  # same port, empty data
    resp = await h.call("edge", descriptor(("remote_address", "q")))
    assert resp.overall_code == Code.OK and resp.statuses[0].limit_remaining == 2
    async with aiohttp.ClientSession() as session, session.get(h.admin + "/healthz") as resp:
        assert resp.status == 200
