"""Without a loaded policy the Check RPC fails, and Envoy's failure mode alone decides.

One Envoy, three listeners cut from envoy-configs/authz.yaml, in front of an authz service
whose policy path does not load: ``failure_mode_allow: true`` lets the request through,
``false`` denies it with ``status_on_error`` (the shipped 503, or Envoy's default 403).
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from envoy_mixer.runtime.service import start
from envoy_mixer.runtime.settings import ServerSettings
from extauthz.app import build_service

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "envoy-configs" / "authz.yaml"


def _ext_authz(listener: dict[str, Any]) -> dict[str, Any]:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (config,) = [f["typed_config"] for f in hcm["http_filters"]
                 if f["name"] == "envoy.filters.http.ext_authz"]
    return config  # type: ignore[no-any-return]


def render(ports: dict[str, int], admin: int, upstream: int, authz: int) -> str:
    """authz.yaml with one listener per failure mode (``closed`` is the shipped one)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    shipped = cfg["static_resources"]["listeners"][0]
    assert _ext_authz(shipped)["failure_mode_allow"] is False
    listeners = []
    for name, port in ports.items():
        listener = copy.deepcopy(shipped)
        listener["name"] = name
        listener["address"]["socket_address"]["port_value"] = port
        ext_authz = _ext_authz(listener)
        if name == "open":
            ext_authz["failure_mode_allow"] = True
            ext_authz["failure_mode_allow_header_add"] = True
        elif name == "closed_default":
            del ext_authz["status_on_error"]
        listeners.append(listener)
    cfg["static_resources"]["listeners"] = listeners
    by_name = {"upstream": upstream, "mixer_authz": authz}
    for cluster in cfg["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = by_name[cluster["name"]]
    return yaml.safe_dump(cfg)


def _get(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/get", headers={"host": "httpbin.foo"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.slow
async def test_failure_mode_decides_while_no_policy_is_loaded(
        tmp_path: Path, start_envoy: Callable[..., Any], free_port: Callable[[], int]) -> None:
    """No policy: allow-on-failure passes (marked), fail-closed gives status_on_error or 403."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({k.lower(): v for k, v in request.headers.items()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    registry = CollectorRegistry()
    authz = await start(build_service(tmp_path / "missing", registry=registry),
                        ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    try:
        ports = {"open": free_port(), "closed": free_port(), "closed_default": free_port()}
        admin = free_port()
        await asyncio.to_thread(
            start_envoy, render(ports, admin, runner.addresses[0][1], authz.grpc_port), admin)
        got = {name: await asyncio.to_thread(_get, port) for name, port in ports.items()}
        status, body = got["open"]
        assert status == 200
        assert json.loads(body)["x-envoy-auth-failure-mode-allowed"] == "true"
        assert got["closed"][0] == 503
        assert got["closed_default"][0] == 403
        assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "no_policy"}) == 3
    finally:
        await authz.stop(0)
        await runner.cleanup()
