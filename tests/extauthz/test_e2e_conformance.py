"""Istio-conformance differences that only show through a real Envoy (issue 8 §1).

envoy-configs/authz.yaml with two additions for the test: the plain listener accepts the PROXY
protocol, and a second, mTLS listener (client certificates from a test CA) serves the same
routes. One Envoy and one in-process authz service answer every case:

- repeated header lines reach the engine apart (``encode_raw_headers``), so a DENY on one value
  catches ``x-role: admin`` + ``x-role: guest``; an empty header value is present for ``*``;
- an upper-case SNI cannot pass a ``notValues`` DENY;
- ``ipBlocks`` read the physical peer behind the PROXY protocol, ``remoteIpBlocks`` the PROXY
  address, and a client-sent copy of the transient peer header changes nothing and never
  reaches the upstream;
- every URI SAN of the client certificate is checked against a DENY on principals;
- identity headers a client forges (peer metadata, XFCC) change no decision: principals and
  namespaces come only from the verified certificate.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
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

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-guest, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/role"]}}]
    when: [{key: "request.headers[x-role]", values: ["guest"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-flagged, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/flag"]}}]
    when: [{key: "request.headers[x-flag]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni-only-api, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/sni"]}}]
    when: [{key: connection.sni, notValues: ["api.example.com"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: ["127.0.0.1"]}}]
    to: [{operation: {paths: ["/ip"]}}]
  - from: [{source: {remoteIpBlocks: ["9.8.7.6"]}}]
    to: [{operation: {paths: ["/remote"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad-peer, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/x/sa/bad"]}}]
    to: [{operation: {paths: ["/peer"]}}]
  - from: [{source: {notNamespaces: ["admin"]}}]
    to: [{operation: {paths: ["/admin-only"]}}]
"""

GOOD = "spiffe://cluster.local/ns/x/sa/good"
BAD = "spiffe://cluster.local/ns/x/sa/bad"


def render_config(tmp: Path, listen: int, tls_listen: int, admin: int, upstream: int,
                  authz: int, certs: Any) -> str:
    """authz.yaml on these ports, with PROXY protocol on the plain listener and an mTLS one."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin
    plain = cfg["static_resources"]["listeners"][0]
    plain["address"]["socket_address"]["port_value"] = listen
    plain["listener_filters"] = [{
        "name": "envoy.filters.listener.proxy_protocol",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3."
                     "ProxyProtocol",
            "allow_requests_without_proxy_protocol": True,
        },
    }]
    files = {}
    for name, text in (("ca.pem", certs["ca"][0]), ("server.pem", certs["server"][0]),
                       ("server.key", certs["server"][1])):
        files[name] = tmp / name
        files[name].write_text(text)
    tls = copy.deepcopy(plain)
    tls["name"] = "ingress_tls"
    tls["address"]["socket_address"]["port_value"] = tls_listen
    del tls["listener_filters"]
    tls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                     "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": {"filename": str(files["server.pem"])},
                    "private_key": {"filename": str(files["server.key"])},
                }],
                "validation_context": {"trusted_ca": {"filename": str(files["ca.pem"])}},
            },
        },
    }
    cfg["static_resources"]["listeners"].append(tls)
    ports = {"upstream": upstream, "mixer_authz": authz}
    for cluster in cfg["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
    return yaml.safe_dump(cfg)


class Proxy:
    """Raw clients for the two listeners (repeated headers, PROXY protocol, mTLS + SNI)."""

    def __init__(self, port: int, tls_port: int, tmp: Path, certs: Any) -> None:
        self.port = port
        self.tls_port = tls_port
        self.tmp = tmp
        self.certs = certs

    def _plain(self, path: str, lines: list[tuple[str, str]]) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("host", "httpbin.foo")
            for name, value in lines:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def _proxied(self, path: str, client_ip: str, extra: str = "") -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(
                f"PROXY TCP4 {client_ip} 127.0.0.1 4444 {self.port}\r\n"
                f"GET {path} HTTP/1.1\r\nHost: httpbin.foo\r\n{extra}"
                "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def _tls(self, path: str, sni: str, client: str, lines: list[tuple[str, str]]) -> int:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        cert, key = self.tmp / f"{client}.pem", self.tmp / f"{client}.key"
        cert.write_text(self.certs[client][0])
        key.write_text(self.certs[client][1])
        context.load_cert_chain(cert, key)
        extra = "".join(f"{name}: {value}\r\n" for name, value in lines)
        # Connect to 127.0.0.1 and present `sni` (the name given to wrap_socket).
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=sni) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: httpbin.foo\r\n{extra}"
                         "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1])

    async def get(self, path: str, *lines: tuple[str, str]) -> tuple[int, str]:
        """GET on the plain listener with these header lines (names may repeat)."""
        return await asyncio.to_thread(self._plain, path, list(lines))

    async def proxied(self, path: str, client_ip: str, extra: str = "") -> tuple[int, str]:
        """GET on the plain listener behind a PROXY protocol v1 header naming ``client_ip``."""
        return await asyncio.to_thread(self._proxied, path, client_ip, extra)

    async def tls(self, path: str, sni: str, client: str = "good",
                  *lines: tuple[str, str]) -> int:
        """GET on the mTLS listener with this SNI, client certificate and header lines."""
        return await asyncio.to_thread(self._tls, path, sni, client, list(lines))


@pytest.fixture
async def proxy(tmp_path: Path, h: Any, start_envoy: Callable[..., Any],
                free_port: Callable[[], int]) -> AsyncIterator[Proxy]:
    """Echo upstream and authz in-process, Envoy (PROXY + mTLS listeners) as a subprocess."""
    ca = h.certificate_and_key(common_name="test CA", ca=True)
    certs = {
        "ca": ca,
        "server": h.certificate_and_key(dns=["api.example.com"], common_name="server",
                                        issuer=ca),
        "good": h.certificate_and_key(uris=[GOOD], common_name="good", issuer=ca),
        "both": h.certificate_and_key(uris=[GOOD, BAD], common_name="both", issuer=ca),
    }
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream_port = runner.addresses[0][1]
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    authz = await start(build_service(policy, registry=CollectorRegistry()),
                        ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    listen, tls_listen, admin = free_port(), free_port(), free_port()
    try:
        await asyncio.to_thread(
            start_envoy, render_config(tmp_path, listen, tls_listen, admin, upstream_port,
                                       authz.grpc_port, certs), admin)
        yield Proxy(listen, tls_listen, tmp_path, certs)
    finally:
        await authz.stop(0)
        await runner.cleanup()


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"headers": dict(request.headers)})


@pytest.mark.slow
async def test_repeated_header_lines_cannot_pass_a_deny(proxy: Proxy) -> None:
    """`x-role: admin` + `x-role: guest` is denied; one line `admin,guest` is not `guest`."""
    assert (await proxy.get("/role", ("x-role", "admin"), ("x-role", "guest")))[0] == 403
    assert (await proxy.get("/role", ("x-role", "guest"), ("x-role", "admin")))[0] == 403
    assert (await proxy.get("/role", ("x-role", "admin,guest")))[0] == 200
    assert (await proxy.get("/role", ("x-role", "admin")))[0] == 200


@pytest.mark.slow
async def test_empty_header_value_is_present(proxy: Proxy) -> None:
    """A header sent with an empty value is present for "*" (a DENY on it applies)."""
    assert (await proxy.get("/flag", ("x-flag", "")))[0] == 403
    assert (await proxy.get("/flag"))[0] == 200


@pytest.mark.slow
async def test_upper_case_sni_cannot_pass_a_not_values_deny(proxy: Proxy) -> None:
    """The SNI is compared lower-cased, as Envoy hands it to RBAC."""
    assert await proxy.tls("/sni", "API.EXAMPLE.COM") == 200
    assert await proxy.tls("/sni", "api.example.com") == 200
    assert await proxy.tls("/sni", "other.example.com") == 403


@pytest.mark.slow
async def test_ip_blocks_use_the_physical_peer_behind_proxy_protocol(proxy: Proxy) -> None:
    """ipBlocks see the physical 127.0.0.1 behind PROXY; remoteIpBlocks see the PROXY client;
    a client-sent transient header is overwritten and never reaches the upstream."""
    assert (await proxy.proxied("/ip", "9.8.7.6"))[0] == 200
    assert (await proxy.get("/ip"))[0] == 200
    assert (await proxy.proxied("/remote", "9.8.7.6"))[0] == 403
    assert (await proxy.proxied("/remote", "5.5.5.5"))[0] == 200
    assert (await proxy.get("/remote"))[0] == 200
    status, body = await proxy.proxied("/ip", "9.8.7.6",
                                       "x-mixer-direct-remote-address: 6.6.6.6\r\n")
    assert status == 200
    seen = {k.lower() for k in json.loads(body)["headers"]}
    assert "x-mixer-direct-remote-address" not in seen


@pytest.mark.slow
async def test_every_uri_san_of_the_client_certificate_is_checked(proxy: Proxy) -> None:
    """A DENY on a principal catches it as the second URI SAN of the peer certificate."""
    assert await proxy.tls("/peer", "api.example.com", "good") == 200
    assert await proxy.tls("/peer", "api.example.com", "both") == 403


@pytest.mark.slow
async def test_forged_identity_headers_change_no_decision(proxy: Proxy) -> None:
    """Peer-metadata and XFCC headers naming another identity neither deny nor admit anyone."""
    import base64
    import json

    claim = base64.b64encode(json.dumps(
        {"namespace": "admin", "service_account": "bad", "name": "x"}).encode()).decode()
    forged = [("x-mixer-peer-metadata", claim), ("x-mixer-peer-metadata-id", "sidecar~admin"),
              ("x-forwarded-client-cert", f"By=spiffe://x;URI={BAD}"),
              ("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/admin/sa/x")]
    # The certificate says "good": a DENY on "bad" stays off, an admin-only path stays shut.
    assert await proxy.tls("/peer", "api.example.com", "good", *forged) == 200
    assert await proxy.tls("/admin-only", "api.example.com", "good", *forged) == 403
    assert await proxy.tls("/admin-only", "api.example.com", "good") == 403
