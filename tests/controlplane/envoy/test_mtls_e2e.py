"""Generated sidecars under mTLS, through real Envoys (issue 10 §5), processes on loopback.

One module-wide mesh: sidecars for ``frontend``, a third workload ``intruder`` (with a valid
mesh certificate of its own) and ``backend`` three times, once per PeerAuthentication mode
(STRICT, PERMISSIVE, DISABLE), all rendered by :func:`controlplane.envoy.roles.sidecar`; the
authz and telemetry services as ``mixer`` subprocesses; the backend app (HTTP) and an echo
server (TCP). The backend's policy admits ``GET /api/*`` from the principal
``cluster.local/ns/default/sa/frontend`` only, and ``GET /open/*`` from anyone.
"""

from __future__ import annotations

import http.client
import json
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from controlplane.ca import SpiffeId, create_root, init_ca, load_ca, write_bundle
from controlplane.envoy.model import (
    Endpoint,
    InboundMode,
    MeshTls,
    MixerServices,
    ProxyOptions,
    TcpInbound,
    TcpOutbound,
    Upstream,
    Workload,
)
from controlplane.envoy.render import to_yaml
from controlplane.envoy.roles import sidecar
from envoy_mixer.dev import procs
from tests.waits import until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
FRONTEND = Workload("frontend")
INTRUDER = Workload("intruder")
BACKEND = Workload("backend")
FRONTEND_SAN = "spiffe://cluster.local/ns/default/sa/frontend"
BACKEND_SAN = "spiffe://cluster.local/ns/default/sa/backend"
INTRUDER_SAN = "spiffe://cluster.local/ns/default/sa/intruder"
TCP_SERVICE_PORT = 9000
MODES: tuple[InboundMode, ...] = ("STRICT", "PERMISSIVE", "DISABLE")

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-allow, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/default/sa/frontend"]}}]
      to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
    - to: [{operation: {methods: ["GET"], paths: ["/open/*"]}}]
"""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@dataclass
class MeshUnderTest:
    """Addresses of the running mesh and the certificate files of its clients."""

    tmp: Path
    ports: dict[str, int]
    root: Path
    certs: dict[str, tuple[Path, Path]]
    backend_certs: Path
    ca_dir: Path

    def metrics(self) -> str:
        """The telemetry service's /metrics text."""
        return _get_plain(self.ports["telemetry_admin"], "/metrics")[1]


def _get_plain(port: int, path: str, headers: dict[str, str] | None = None,
               host: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate claiming the frontend's SPIFFE id."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster.local")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(FRONTEND_SAN)]), critical=True)
            .sign(key, hashes.SHA256()))
    out = tmp / "self-signed"
    out.mkdir()
    (out / "cert-chain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return out / "cert-chain.pem", out / "key.pem"


def _pair(directory: Path) -> tuple[Path, Path]:
    return directory / "cert-chain.pem", directory / "key.pem"


def _tls_context(root: Path, pair: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # SPIFFE certificates carry no DNS name: the chain to the mesh root is what is checked.
    context.check_hostname = False
    context.load_verify_locations(cafile=str(root))
    # Istio's ALPN, so a PERMISSIVE listener takes its mTLS chain.
    context.set_alpn_protocols(["istio", "http/1.1"])
    if pair is not None:
        context.load_cert_chain(str(pair[0]), str(pair[1]))
    return context


def _get_tls(port: int, path: str, root: Path, pair: tuple[Path, Path] | None,
             headers: dict[str, str] | None = None) -> tuple[int, int]:
    """GET over TLS on a new connection: (status, serial of the server's certificate)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                       context=_tls_context(root, pair))
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return resp.status, x509.load_der_x509_certificate(der).serial_number
    finally:
        conn.close()


def _outcome(call: Callable[[], object]) -> str:
    """``refused`` when the connection or handshake fails, else ``accepted``."""
    try:
        call()
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return "refused"
    return "accepted"


def _series(text: str, metric: str, **labels: str) -> list[dict[str, str]]:
    """Label sets of ``metric`` samples whose labels include ``labels``."""
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v
                                             for k, v in labels.items()):
                out.append(dict(sample.labels))
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshUnderTest]:
    """Start the services, the apps and five Envoys; stop every one of them afterwards."""
    tmp = tmp_path_factory.mktemp("mtls")
    now = datetime.now(UTC)
    ca_dir = tmp / "ca"
    init_ca(ca_dir, "cluster.local", clock=lambda: now)
    ca = load_ca(ca_dir)
    dirs = {}
    for name in ("frontend", "intruder", "backend"):
        dirs[name] = write_bundle(tmp / "certs" / name,
                                  ca.issue(SpiffeId("cluster.local", "default", name), now=now))
    foreign = create_root("cluster.local", now=now).issue(
        SpiffeId("cluster.local", "default", "frontend"), now=now)
    expired = ca.issue(SpiffeId("cluster.local", "default", "frontend"),
                       now=now - timedelta(hours=3), ttl=timedelta(hours=1))
    foreign_dir = write_bundle(tmp / "certs" / "foreign", foreign)
    expired_dir = write_bundle(tmp / "certs" / "expired", expired)

    names = ["authz", "authz_admin", "telemetry", "telemetry_admin", "app", "echo",
             "frontend_out", "frontend_tcp", "intruder_out"]
    for mode in MODES:
        names += [f"backend_{mode}", f"backend_{mode}_tcp", f"backend_{mode}_admin"]
    names += ["frontend_in", "frontend_admin", "intruder_in", "intruder_admin"]
    ports = {name: procs.free_port() for name in names}
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    services = MixerServices(authz=Endpoint("127.0.0.1", ports["authz"]),
                             telemetry=Endpoint("127.0.0.1", ports["telemetry"]),
                             log_flush_interval="0.2s")
    started: list[procs.ManagedProcess] = []
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", ports["echo"]), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        started.append(procs.mixer_process(
            ["authz", "--policy", str(policy), "--listen", f"127.0.0.1:{ports['authz']}",
             "--admin", f"127.0.0.1:{ports['authz_admin']}"],
            ports["authz_admin"], tmp / "authz.log").start())
        started.append(procs.mixer_process(
            ["telemetry", "--config", str(REPO / "examples" / "telemetry.yaml"),
             "--listen", f"127.0.0.1:{ports['telemetry']}",
             "--admin", f"127.0.0.1:{ports['telemetry_admin']}"],
            ports["telemetry_admin"], tmp / "telemetry.log").start())
        started.append(procs.ManagedProcess(
            name="backend app",
            argv=[sys.executable, "-m", "envoy_mixer.dev.demo.app", "--name", "backend",
                  "--port", str(ports["app"])],
            log_path=tmp / "app.log",
            ready=lambda: procs.http_ok(f"http://127.0.0.1:{ports['app']}/healthz")).start())

        def config(name: str, text: str, admin: int) -> None:
            path = tmp / f"envoy-{name}.yaml"
            path.write_text(text)
            started.append(procs.envoy_process(path, admin, tmp / f"envoy-{name}.log").start())

        app = Endpoint("127.0.0.1", ports["app"])
        for mode in MODES:
            options = ProxyOptions(admin=Endpoint("127.0.0.1", ports[f"backend_{mode}_admin"]),
                                   tls=MeshTls(str(dirs["backend"]), mode))
            config(f"backend-{mode}", to_yaml(sidecar(
                BACKEND, services, options, inbound_port=ports[f"backend_{mode}"], app=app,
                tcp_inbound=[TcpInbound(ports[f"backend_{mode}_tcp"], TCP_SERVICE_PORT,
                                        Endpoint("127.0.0.1", ports["echo"]))])),
                ports[f"backend_{mode}_admin"])
        strict = Endpoint("127.0.0.1", ports["backend_STRICT"])
        for client in (FRONTEND, INTRUDER):
            options = ProxyOptions(admin=Endpoint("127.0.0.1", ports[f"{client.name}_admin"]),
                                   tls=MeshTls(str(dirs[client.name])))
            tcp = [TcpOutbound(ports["frontend_tcp"], Upstream(
                "backend", Endpoint("127.0.0.1", ports["backend_STRICT_tcp"]),
                port=TCP_SERVICE_PORT))] if client is FRONTEND else []
            config(client.name, to_yaml(sidecar(
                client, services, options, inbound_port=ports[f"{client.name}_in"], app=app,
                outbound_port=ports[f"{client.name}_out"],
                upstreams=[Upstream("backend", strict)], tcp_outbound=tcp)),
                ports[f"{client.name}_admin"])
        for proc in started:
            proc.wait_ready(30)
        yield MeshUnderTest(
            tmp=tmp, ports=ports, root=dirs["backend"] / "root-cert.pem",
            certs={"frontend": _pair(dirs["frontend"]), "intruder": _pair(dirs["intruder"]),
                   "foreign": _pair(foreign_dir), "expired": _pair(expired_dir),
                   "self_signed": _self_signed(tmp)},
            backend_certs=dirs["backend"], ca_dir=ca_dir)
    finally:
        for proc in reversed(started):
            proc.stop()
        echo.shutdown()
        echo.server_close()


def test_strict_refuses_every_client_without_a_valid_mesh_certificate(
        mesh: MeshUnderTest) -> None:
    """STRICT inbound: no cert, self-signed, expired, foreign-CA and plaintext are refused."""
    port, root = mesh.ports["backend_STRICT"], mesh.root

    def with_cert(pair: tuple[Path, Path] | None) -> Callable[[], object]:
        return lambda: _get_tls(port, "/open/x", root, pair)

    calls: dict[str, Callable[[], object]] = {
        "plaintext": lambda: _get_plain(port, "/open/x"), "no_certificate": with_cert(None),
        **{name: with_cert(mesh.certs[name]) for name in ("self_signed", "expired", "foreign")},
    }
    assert {name: _outcome(call) for name, call in calls.items()} == dict.fromkeys(
        calls, "refused")
    assert _get_tls(port, "/open/x", root, mesh.certs["frontend"])[0] == 200


def test_principal_allow_admits_frontend_and_rejects_a_third_mesh_workload(
        mesh: MeshUnderTest) -> None:
    """Through their sidecars: frontend's call is allowed, intruder's (valid cert) gets 403."""
    headers = {"Host": "backend"}
    status, body = _get_plain(mesh.ports["frontend_out"], "/api/hello", headers)
    assert status == 200 and json.loads(body)["service"] == "backend"
    assert _get_plain(mesh.ports["intruder_out"], "/api/hello", headers)[0] == 403
    # The intruder's sidecar did verify the backend: only the policy said no.
    assert _get_plain(mesh.ports["intruder_out"], "/open/x", headers)[0] == 200


def test_forged_identity_headers_change_no_decision_and_no_label(mesh: MeshUnderTest) -> None:
    """Frontend's peer headers sent by intruder (mTLS) or in plaintext: 403, never 'frontend'."""
    forged = {"x-mixer-peer-metadata": FRONTEND.peer_metadata_header(),
              "x-mixer-peer-metadata-id": FRONTEND.node_id("sidecar")}
    strict = _get_tls(mesh.ports["backend_STRICT"], "/api/forged", mesh.root,
                      mesh.certs["intruder"], forged)[0]
    plain = _get_plain(mesh.ports["backend_PERMISSIVE"], "/api/forged", forged)[0]
    assert (strict, plain) == (403, 403)

    def reported() -> bool:
        denied = _series(mesh.metrics(), "istio_requests_total", reporter="destination",
                         response_code="403", destination_workload="backend")
        sources = {(s["source_workload"], s["source_principal"]) for s in denied}
        return {("intruder", INTRUDER_SAN), ("unknown", "unknown")} <= sources

    until(reported)
    denied = _series(mesh.metrics(), "istio_requests_total", reporter="destination",
                     response_code="403")
    assert not [s for s in denied if s["source_workload"] == "frontend"
                or s["source_principal"] == FRONTEND_SAN]


def test_permissive_accepts_mtls_and_plaintext(mesh: MeshUnderTest) -> None:
    """PERMISSIVE: a mesh client and a plaintext client both reach the app on one port."""
    port = mesh.ports["backend_PERMISSIVE"]
    assert _get_tls(port, "/api/x", mesh.root, mesh.certs["frontend"])[0] == 200
    assert _get_plain(port, "/open/x")[0] == 200
    # Plaintext carries no principal: the frontend-only rule does not apply.
    assert _get_plain(port, "/api/x")[0] == 403


def test_disable_accepts_plaintext_only(mesh: MeshUnderTest) -> None:
    """DISABLE: plaintext reaches the app; a TLS handshake is refused."""
    port = mesh.ports["backend_DISABLE"]
    assert _get_plain(port, "/open/x")[0] == 200
    assert _outcome(lambda: _get_tls(port, "/open/x", mesh.root, mesh.certs["frontend"])) == (
        "refused")


def test_telemetry_reports_mutual_tls_and_both_principals_for_http_and_tcp(
        mesh: MeshUnderTest) -> None:
    """Both reporters, HTTP and TCP: connection_security_policy mutual_tls, both SPIFFE ids."""
    assert _get_plain(mesh.ports["frontend_out"], "/api/metrics", {"Host": "backend"})[0] == 200
    with socket.create_connection(("127.0.0.1", mesh.ports["frontend_tcp"]), timeout=10) as conn:
        conn.sendall(b"ping\n")
        assert conn.recv(16) == b"ping\n"
    wanted = {"connection_security_policy": "mutual_tls", "source_workload": "frontend",
              "source_principal": FRONTEND_SAN, "destination_workload": "backend",
              "destination_principal": BACKEND_SAN}

    def reporters(metric: str) -> set[str]:
        return {s["reporter"] for s in _series(mesh.metrics(), metric, **wanted)}

    until(lambda: reporters("istio_requests_total") >= {"source", "destination"})
    until(lambda: reporters("istio_tcp_connections_opened_total") >= {"source", "destination"})


def test_backend_certificate_rotation_under_load_loses_no_request(mesh: MeshUnderTest) -> None:
    """200 requests through the sidecars while the backend's cert is swapped: all 200."""
    port = mesh.ports["frontend_out"]
    results: list[int | str] = []
    halfway = threading.Event()

    def traffic() -> None:
        for i in range(200):
            if i == 50:
                halfway.set()
            try:
                # A new client connection each time; the sidecars pool theirs.
                results.append(_get_plain(port, "/api/rotate", {"Host": "backend"})[0])
            except (OSError, http.client.HTTPException) as exc:
                results.append(repr(exc))
        halfway.set()

    thread = threading.Thread(target=traffic)
    thread.start()
    assert halfway.wait(60)
    rotated = load_ca(mesh.ca_dir).issue(SpiffeId("cluster.local", "default", "backend"),
                                         now=datetime.now(UTC))
    write_bundle(mesh.backend_certs, rotated)
    thread.join(120)
    assert not thread.is_alive()
    assert results == [200] * 200
    # Envoy applies the swap asynchronously: new connections soon get the new certificate.
    new_serial = rotated.certificate.serial_number
    until(lambda: _get_tls(mesh.ports["backend_STRICT"], "/open/x", mesh.root,
                            mesh.certs["frontend"])[1] == new_serial)
