"""End to end through a real Envoy: envoy-configs/authz.yaml -> our service -> echo upstream."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from envoy_mixer.dev import procs
from envoy_mixer.runtime.service import RunningService, start
from envoy_mixer.runtime.settings import ServerSettings
from extauthz.app import build_service

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "envoy-configs" / "authz.yaml"

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: foo
  annotations:
    # Case variants (/ADMIN) are denied too: Envoy does not fold case, this policy does.
    authz.envoy-mixer.io/case-insensitive-paths: "true"
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only-for-private, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/private*"]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: ISSUER
    jwks: JWKS
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - {header: x-jwt-sub, claim: sub}
    - {header: x-jwt-team, claim: org.team}
    - {header: x-jwt-role, claim: role}
"""


def render_config(listen: int, admin: int, upstream: int, authz: int) -> str:
    """The shipped config with its ports rewritten for this test."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen
    ports = {"upstream": upstream, "mixer_authz": authz}
    for cluster in cfg["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
    return yaml.safe_dump(cfg)


class Mesh:
    """Envoy + authz + echo upstream, with a blocking raw HTTP client run off the loop."""

    def __init__(self, port: int, authz: RunningService) -> None:
        self.port = port
        self.authz = authz

    def _get(self, path: str, headers: dict[str, str] | list[tuple[str, str]],
             ) -> tuple[int, str, dict[str, str]]:
        # http.client sends the request target exactly as given (no client-side cleanup).
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            # A list of pairs sends a repeated name as separate lines.
            lines = headers.items() if isinstance(headers, dict) else headers
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            for name, value in [("host", "httpbin.foo"), *lines]:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.read().decode(), dict(resp.getheaders())
        finally:
            conn.close()

    async def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        """GET ``path`` through Envoy."""
        return await asyncio.to_thread(self._get, path, headers)

    async def get_lines(self, path: str, lines: list[tuple[str, str]],
                        ) -> tuple[int, str, dict[str, str]]:
        """GET ``path`` with these header lines (names may repeat)."""
        return await asyncio.to_thread(self._get, path, lines)


@pytest.fixture
async def mesh(tmp_path: Path, signer: Any, start_envoy: Callable[..., Any],
               free_port: Callable[[], int]) -> AsyncIterator[Mesh]:
    """Echo upstream and authz in-process, Envoy as a subprocess."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream_port = runner.addresses[0][1]

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("ISSUER", signer.issuer)
                      .replace("JWKS", json.dumps(signer.jwks)))
    authz = await start(build_service(policy, registry=CollectorRegistry()),
                        ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    listen, admin = free_port(), free_port()
    try:
        await asyncio.to_thread(
            start_envoy, render_config(listen, admin, upstream_port, authz.grpc_port), admin)
        yield Mesh(listen, authz)
    finally:
        await authz.stop(0)
        await runner.cleanup()


@pytest.mark.slow
def test_shipped_config_validates() -> None:
    """envoy-configs/authz.yaml passes `envoy --mode validate`."""
    result = procs.validate_envoy_config(CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
async def test_allow_deny_jwt_and_bypass_attempts(mesh: Mesh, signer: Any) -> None:
    """200/403/401, claims forwarded, and no path trick reaches /admin; fail closed when down."""
    status, body, _ = await mesh.get("/get?x=1")
    assert status == 200 and json.loads(body)["path"] == "/get?x=1"

    status, body, headers = await mesh.get("/admin")
    assert (status, body) == (403, "RBAC: access denied")

    token = signer.token(org={"team": "blue"})
    status, body, _ = await mesh.get("/private/x", authorization=f"Bearer {token}")
    seen = json.loads(body)["headers"]
    assert status == 200
    assert (seen["x-jwt-sub"], seen["x-jwt-team"]) == ("alice", "blue")
    assert "Authorization" not in seen  # forwardOriginalToken: false strips it

    status, _, _ = await mesh.get("/private/x")
    assert status == 403  # no token: authn passes, the DENY on notRequestPrincipals decides
    status, body, _ = await mesh.get("/get", authorization="Bearer not.a.jwt")
    assert status == 401
    status, _, _ = await mesh.get("/get", authorization=f"Bearer {token[:-3]}xyz")
    assert status == 401

    for trick in ("//admin", "/./admin", "/x/../admin", "/x/%2e%2e/admin", "/%2e/admin",
                  "/x/%2E%2E/admin/", "/admin/./", "///admin//x", "/ADMIN", "/Admin/x",
                  "/%61dmin"):
        status, body, _ = await mesh.get(trick)
        assert (status, body) == (403, "RBAC: access denied"), f"{trick} -> {status} {body}"
    # An escaped slash is unescaped and redirected (UNESCAPE_AND_REDIRECT), never forwarded.
    status, _, headers = await mesh.get("/x/..%2Fadmin")
    assert status == 307 and headers["location"].endswith("/admin")

    status, _, _ = await mesh.get("/healthz/ready")
    assert status == 200
    await mesh.authz.stop(0)
    status, _, _ = await mesh.get("/get")
    assert status == 503  # service down: fail closed (status_on_error), not allowed
    status, _, _ = await mesh.get("/healthz/ready")
    assert status == 200  # ext_authz disabled on the health route


def _seen(body: str) -> dict[str, str]:
    """The request headers the echo upstream received, names lower-cased."""
    return {k.lower(): v for k, v in json.loads(body)["headers"].items()}


@pytest.mark.slow
async def test_forged_jwt_output_headers_never_reach_the_app(mesh: Mesh, signer: Any) -> None:
    """Client-sent output headers are removed without a token, without the claim, and replaced."""
    forged = [("x-jwt-role", "admin"), ("x-jwt-role", "root"), ("x-jwt-payload", "e30"),
              ("x-jwt-sub", "mallory")]
    status, body, _ = await mesh.get_lines("/get", forged)
    assert status == 200
    assert not {"x-jwt-role", "x-jwt-payload", "x-jwt-sub"} & _seen(body).keys()

    no_role = signer.token()
    status, body, _ = await mesh.get_lines(
        "/get", [*forged, ("authorization", f"Bearer {no_role}")])
    seen = _seen(body)
    assert status == 200 and "x-jwt-role" not in seen
    assert (seen["x-jwt-sub"], seen["x-jwt-payload"]) == ("alice", no_role.split(".")[1])

    with_role = signer.token(role="viewer")
    status, body, _ = await mesh.get_lines(
        "/get", [*forged, ("authorization", f"Bearer {with_role}")])
    assert status == 200 and _seen(body)["x-jwt-role"] == "viewer"  # one line: the claim's


@pytest.mark.slow
async def test_large_token_is_answered_without_its_payload_header(mesh: Mesh,
                                                                  signer: Any) -> None:
    """A valid 40 KB token passes; the oversized payload header is left out, the claims kept."""
    token = signer.token(role="viewer", blob="b" * 30_000)
    assert len(token) > 40_000
    status, body, _ = await mesh.get_lines(
        "/get", [("x-jwt-payload", "forged"), ("authorization", f"Bearer {token}")])
    seen = _seen(body)
    assert status == 200
    assert "x-jwt-payload" not in seen and "authorization" not in seen
    assert (seen["x-jwt-sub"], seen["x-jwt-role"]) == ("alice", "viewer")
    assert mesh.authz.service.registry.get_sample_value(
        "mixer_authz_output_headers_dropped_total") == 1
