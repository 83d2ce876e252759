"""Trivial always-OK servicers for the three Envoy APIs: the baseline we measure against.

Run as ``python -m bench.trivial --api ratelimit|authz|accesslog --listen HOST:PORT``. Same stack
as ours (grpc.aio on uvloop) and nothing else, so the difference in server CPU per call is the
cost of our own work.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.rpc import code_pb2, status_pb2


class TrivialRateLimit(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """Answers OK to every ShouldRateLimit."""

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext
    ) -> rls_pb2.RateLimitResponse:
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


class TrivialAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allows every Check."""

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


class TrivialAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Reads and drops every access-log message."""

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        async for _ in request_iterator:
            pass
        return als_pb2.StreamAccessLogsResponse()


async def serve(api: str, listen: str) -> None:
    """Serve one trivial servicer until killed."""
    server = grpc.aio.server()
    _register(api, server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def _register(api: str, server: grpc.aio.Server) -> None:
    if api == "ratelimit":
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(TrivialRateLimit(), server)
    elif api == "authz":
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(TrivialAuthz(), server)
    else:
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(TrivialAccessLog(), server)


def serve_on_runtime(api: str, listen: str, admin: str) -> int:
    """The same trivial servicer on our shared runtime (health, reflection, admin, reload).

    Comparing this with the bare trivial server isolates what the runtime itself costs.
    """
    from prometheus_client import CollectorRegistry

    from envoy_mixer.runtime.service import Service, run
    from envoy_mixer.runtime.settings import ServerSettings

    def build() -> Service:
        return Service(name=f"trivial-{api}", grpc_services=[], registry=CollectorRegistry(),
                       register=lambda server: _register(api, server))

    return run(build, ServerSettings(service=f"trivial-{api}", listen=listen, admin=admin))


def main() -> None:
    """Parse flags and serve."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", choices=["ratelimit", "authz", "accesslog"], required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--runtime-admin", metavar="HOST:PORT",
                        help="serve on envoy-mixer's shared runtime with this admin address")
    args = parser.parse_args()
    if args.runtime_admin:
        raise SystemExit(serve_on_runtime(args.api, args.listen, args.runtime_admin))
    uvloop.run(serve(args.api, args.listen))


if __name__ == "__main__":
    main()
