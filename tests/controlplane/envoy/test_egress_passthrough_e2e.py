"""The egress gateway under mTLS and PERMISSIVE's TLS passthrough, through real Envoys.

One module-wide set-up on loopback: the authz service; an "external" HTTP server; the egress
gateway (STRICT) from :func:`controlplane.envoy.roles.egress_gateway`; a frontend sidecar whose
:class:`~controlplane.envoy.model.EgressRoute` sends the external host to the gateway; and a
PERMISSIVE backend sidecar in front of an app that serves HTTP and, on the same port, its own
TLS (it peeks at the first byte). The gateway's policy admits the external host only from the
principal ``cluster.local/ns/default/sa/frontend``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.ca import SpiffeId, init_ca, load_ca, write_bundle
from controlplane.envoy.mesh import EGRESS
from controlplane.envoy.model import (
    EgressRoute,
    Endpoint,
    MeshTls,
    MixerServices,
    ProxyOptions,
    Workload,
)
from controlplane.envoy.render import to_yaml
from controlplane.envoy.roles import egress_gateway, sidecar
from envoy_mixer.dev import procs

pytestmark = pytest.mark.slow

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: egress, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules:
    - from: [{{source: {{principals: ["cluster.local/ns/default/sa/frontend"]}}}}]
      to: [{{operation: {{hosts: ["{external}"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend, namespace: default}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: ALLOW
  rules:
    - to: [{{operation: {{methods: ["GET"]}}}}]
"""


@dataclass
class Setup:
    """Ports of the running processes, and the certificates a test client may present."""

    ports: dict[str, int]
    external: str
    root: Path
    certs: dict[str, Path]


class _External(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "9")
        self.end_headers()
        self.wfile.write(b"external\n")

    def log_message(self, *args: object) -> None:
        pass


def _dual_app(port: int, context: ssl.SSLContext) -> http.server.ThreadingHTTPServer:
    """An app answering ``{"tls": ...}``: TLS it terminates itself, or plain HTTP, one port."""

    class Handler(_External):
        tls = False

        def setup(self) -> None:
            # A TLS record starts with 0x16 (handshake); anything else is plain HTTP.
            self.tls = self.request.recv(1, socket.MSG_PEEK) == b"\x16"
            if self.tls:
                self.request = context.wrap_socket(self.request, server_side=True)
            super().setup()

        def do_GET(self) -> None:
            body = json.dumps({"tls": self.tls}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)


def _client_context(root: Path, alpn: list[str], cert_dir: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE certificates carry no DNS name
    context.load_verify_locations(cafile=str(root))
    context.set_alpn_protocols(alpn)
    if cert_dir is not None:
        context.load_cert_chain(str(cert_dir / "cert-chain.pem"), str(cert_dir / "key.pem"))
    return context


def _get(port: int, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """GET / on a new connection (TLS with ``context``): status and body."""
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
            if context is not None else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    try:
        conn.request("GET", "/", headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return True
    return False


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Start authz, the external server, the app and three Envoys; stop all afterwards."""
    tmp = tmp_path_factory.mktemp("egress-mtls")
    now = datetime.now(UTC)
    init_ca(tmp / "ca", "cluster.local", clock=lambda: now)
    ca = load_ca(tmp / "ca")
    certs = {name: write_bundle(tmp / "certs" / name,
                                ca.issue(SpiffeId("cluster.local", ns, account), now=now))
             for name, ns, account in (
                 ("frontend", "default", "frontend"), ("backend", "default", "backend"),
                 ("egress", "istio-system", EGRESS.account))}
    names = ["authz", "authz_admin", "external", "app", "egress", "egress_admin",
             "frontend_in", "frontend_out", "frontend_admin", "backend_in", "backend_admin"]
    ports = {name: procs.free_port() for name in names}
    external = f"127.0.0.1:{ports['external']}"
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(external=external))
    # Ratelimit and telemetry are not running: no ratelimit domain, the logs go nowhere.
    services = MixerServices(authz=Endpoint("127.0.0.1", ports["authz"]),
                             ratelimit=Endpoint("127.0.0.1", procs.free_port()),
                             telemetry=Endpoint("127.0.0.1", procs.free_port()))
    app_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    app_tls.load_cert_chain(str(certs["backend"] / "cert-chain.pem"),
                            str(certs["backend"] / "key.pem"))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", ports["external"]), _External),
               _dual_app(ports["app"], app_tls)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    started: list[procs.ManagedProcess] = []

    def envoy(name: str, text: str) -> None:
        path = tmp / f"envoy-{name}.yaml"
        path.write_text(text)
        admin = ports[f"{name}_admin"]
        started.append(procs.envoy_process(path, admin, tmp / f"envoy-{name}.log").start())

    def options(name: str, mode: str = "STRICT") -> ProxyOptions:
        return ProxyOptions(admin=Endpoint("127.0.0.1", ports[f"{name}_admin"]),
                            tls=MeshTls(str(certs[name]), mode))  # type: ignore[arg-type]

    try:
        started.append(procs.mixer_process(
            ["authz", "--policy", str(policy), "--listen", f"127.0.0.1:{ports['authz']}",
             "--admin", f"127.0.0.1:{ports['authz_admin']}"],
            ports["authz_admin"], tmp / "authz.log").start())
        envoy("egress", to_yaml(egress_gateway(EGRESS, services, options("egress"),
                                               port=ports["egress"])))
        envoy("frontend", to_yaml(sidecar(
            Workload("frontend"), services, options("frontend"),
            inbound_port=ports["frontend_in"], app=Endpoint("127.0.0.1", ports["app"]),
            outbound_port=ports["frontend_out"],
            egress=EgressRoute.to(Endpoint("127.0.0.1", ports["egress"]), (external,)))))
        envoy("backend", to_yaml(sidecar(
            Workload("backend"), services, options("backend", "PERMISSIVE"),
            inbound_port=ports["backend_in"], app=Endpoint("127.0.0.1", ports["app"]))))
        for proc in started:
            proc.wait_ready(30)
        yield Setup(ports, external, certs["frontend"] / "root-cert.pem", certs)
    finally:
        for proc in reversed(started):
            proc.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def test_sidecar_reaches_an_allowed_external_host_through_the_egress_gateway(
        setup: Setup) -> None:
    """Frontend's sidecar → egress gateway over mTLS → the external host: 200, by principal."""
    assert _get(setup.ports["frontend_out"], {"Host": setup.external}) == (200, "external\n")
    # Straight to the gateway with another valid mesh certificate: its principal is not
    # admitted, so the policy decided on the principal the sidecar's certificate carried.
    backend = _client_context(setup.root, ["istio"], setup.certs["backend"])
    assert _get(setup.ports["egress"], {"Host": setup.external}, backend)[0] == 403


def test_strict_egress_gateway_refuses_a_plaintext_client(setup: Setup) -> None:
    """Plain HTTP, or TLS without a client certificate, to the STRICT gateway is refused."""
    port, headers = setup.ports["egress"], {"Host": setup.external}
    assert _refused(lambda: _get(port, headers))
    assert _refused(lambda: _get(port, headers, _client_context(setup.root, ["http/1.1"], None)))


def test_permissive_passes_the_apps_own_tls_through_and_keeps_mtls_and_plaintext(
        setup: Setup) -> None:
    """PERMISSIVE: TLS with ALPN http/1.1 and no cert reaches the app's TLS; mTLS, plaintext."""
    port = setup.ports["backend_in"]
    own_tls = _client_context(setup.root, ["http/1.1"], None)
    assert _get(port, context=own_tls) == (200, '{"tls": true}')
    mesh = _client_context(setup.root, ["istio", "http/1.1"], setup.certs["frontend"])
    assert _get(port, context=mesh) == (200, '{"tls": false}')
    assert _get(port) == (200, '{"tls": false}')
