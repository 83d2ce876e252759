"""A tiny HTTP workload for the demo mesh.

``python -m envoy_mixer.dev.demo.app --name backend --port 8100`` answers every path with JSON
describing the request. With ``--call URL --call-host backend`` (the frontend) it forwards each
request's method and path to ``URL`` (its sidecar's outbound listener) with ``Host: backend``
and relays the upstream's status: a policy denial or a 429 further down shows up at the client.
``/healthz`` is always answered locally.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web

#: Request headers a real app would propagate for tracing; passed to the upstream call.
_PROPAGATE = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
              "x-b3-parentspanid", "x-b3-sampled", "authorization", "x-user-id")

_SESSION = web.AppKey("session", ClientSession)


def build_app(name: str, call: str | None, call_host: str | None) -> web.Application:
    """The aiohttp application for one demo workload."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def handle(request: web.Request) -> web.Response:
        body: dict[str, object] = {
            "service": name, "method": request.method, "path": request.path_qs,
        }
        if call is None:
            return web.json_response(body)
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PROPAGATE}
        if call_host:
            headers["Host"] = call_host
        session = app[_SESSION]
        try:
            async with session.request(request.method, call + request.path_qs,
                                       headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (ClientError, TimeoutError) as exc:
            body["upstream"] = {"error": str(exc) or type(exc).__name__}
            return web.json_response(body, status=502)
        try:
            upstream: object = json.loads(text)
        except ValueError:
            upstream = text.strip()
        body["upstream"] = {"status": status, "body": upstream}
        return web.json_response(body, status=status if status >= 400 else 200)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = ClientSession(timeout=ClientTimeout(total=10))
        yield
        await app[_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run one demo workload until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m envoy_mixer.dev.demo.app", description=__doc__)
    parser.add_argument("--name", required=True, help="workload name reported in responses")
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, required=True, help="listen port")
    parser.add_argument("--call", default=None, metavar="URL",
                        help="forward every request to this base URL (the sidecar outbound)")
    parser.add_argument("--call-host", default=None, help="Host header for forwarded requests")
    args = parser.parse_args(argv)
    web.run_app(build_app(args.name, args.call, args.call_host), host=args.host,
                port=args.port, print=None, access_log=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
