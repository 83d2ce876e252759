"""The mesh across hosts: network namespaces joined by veth links (slow: real processes).

``cp`` runs ``mixer pilot`` and the three services on its link address; ``h1`` runs the
frontend and its Envoy, ``h2`` the backend and its Envoy, each Envoy started from a minimal
bootstrap that names the pilot across the link (topology: ``multihost/netns.py``). Every
request is sent from inside a namespace; nothing is sent from or to the test's own one.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.ca.files import CERT_CHAIN, KEY, ROOT_CERT, write_bundle
from controlplane.ca.identity import SpiffeId
from controlplane.ca.store import init_ca
from controlplane.envoy.model import Endpoint, Workload
from controlplane.envoy.render import to_yaml
from controlplane.xds.bootstrap import xds_bootstrap
from envoy_mixer.dev import procs
from tests.controlplane.multihost.netns import CP, H1, H2, Hosts, NetnsUnavailable

pytestmark = pytest.mark.slow

MESH = Path(__file__).resolve().parent / "multihost" / "mesh"
#: Fixed ports: each namespace has its own loopback and addresses, so nothing can collide.
XDS, PILOT_ADMIN = 15010, 15014
ENVOY_ADMIN = 15000
FRONTEND_APP, FRONTEND_IN, FRONTEND_OUT = 8090, 8091, 8092
BACKEND_APP, BACKEND_IN = 8100, 8101
SERVICES = {"authz": (9191, 9192), "ratelimit": (8081, 6070), "telemetry": (9401, 9402)}
#: The issue's bound: one policy edit reaches every proxy within 2 s.
POLICY_BOUND = 2.0
DENY_PATH = "/api/blocked"
DENY_POLICY = f"""---
# Appended by the test: mesh-wide (root namespace, no selector), so every proxy enforces it.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-blocked
  namespace: istio-system
spec:
  action: DENY
  rules:
    - to:
        - operation:
            paths: ["{DENY_PATH}"]
"""

Response = tuple[int, str]


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """cp, h1 and h2 (named after this process); skipped, with the reason, without netns."""
    try:
        made = Hosts.create(str(os.getpid()))
    except NetnsUnavailable as exc:
        # The issue allows a skip only where the kernel refuses network namespaces (no root, a
        # sandbox without CAP_SYS_ADMIN, no iproute2 to install); CI runs as root, where they
        # work. Anything failing after the namespaces exist raises and fails the test.
        # pyproject's ``-ra`` prints this reason in every run's summary.
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield made
    finally:
        made.destroy()


def _issue(ca_dir: Path, out: Path, namespace: str, account: str) -> Path:
    """A mesh certificate for ``namespace``/``account`` in ``out`` (the CA made if needed)."""
    ca = init_ca(ca_dir, "cluster.local", clock=lambda: datetime.now(UTC)).ca
    return write_bundle(out, ca.issue(SpiffeId("cluster.local", namespace, account),
                                      now=datetime.now(UTC)))


def _bootstrap(workload: str, app: str, certs: Path) -> str:
    """The minimal bootstrap of ``workload``'s sidecar: the pilot across the link, over mTLS."""
    return to_yaml(xds_bootstrap(
        Workload(name=app, namespace="default", pod=workload), "sidecar",
        xds=Endpoint(CP, XDS), admin=Endpoint("127.0.0.1", ENVOY_ADMIN), cert_dir=certs,
        server_san="spiffe://cluster.local/ns/istio-system/sa/istiod"))


def _get(url: str, host: str | None = None) -> Response:
    """GET ``url`` (with ``Host``) from the calling thread's namespace: status and body."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _mtls_get(certs: Path, host: str, port: int, path: str) -> Response:
    """GET over mTLS with the mesh certificate in ``certs`` (a peer the way a sidecar is)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs / ROOT_CERT)
    context.load_cert_chain(certs / CERT_CHAIN, certs / KEY)
    # Mesh certificates name SPIFFE ids, not hosts: the chain to the mesh root is the check.
    context.check_hostname = False
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=3)
    try:
        conn.request("GET", path, headers={"Host": "frontend"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _plaintext_answer(host: str, port: int) -> bytes:
    """What a plaintext HTTP request to ``host:port`` gets back (b"" when refused)."""
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"GET /api/items HTTP/1.1\r\nHost: backend\r\n\r\n")
            return sock.recv(1024)
    except (ConnectionResetError, TimeoutError):
        return b""


def _stats(hosts: Hosts, host: str) -> dict[str, int]:
    """The counters of ``host``'s Envoy (admin on that host's loopback)."""
    def read() -> dict[str, int]:
        url = f"http://127.0.0.1:{ENVOY_ADMIN}/stats?format=json&usedonly"
        with urllib.request.urlopen(url, timeout=3) as resp:
            stats = json.loads(resp.read())["stats"]
        return {s["name"]: int(s["value"]) for s in stats if isinstance(s.get("value"), int)}

    return hosts.run(host, read)


def _eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds (start-up bound only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout:.0f}s: {what}")


def _start_mesh(hosts: Hosts, tmp_path: Path) -> dict[str, Path]:
    """Services and pilot in cp, app + Envoy in h1 and h2; returns the certificate dirs."""
    ca, logs = tmp_path / "ca", tmp_path / "logs"
    certs = {name: _issue(ca, tmp_path / "certs" / name, "default", name)
             for name in ("frontend", "backend", "tester")}
    mesh = tmp_path / "mesh"
    mixer = [sys.executable, "-m", "envoy_mixer.cli"]

    def healthz(port: int) -> Callable[[], bool]:
        return lambda: procs.http_ok(f"http://127.0.0.1:{port}/healthz")

    def listening(port: int) -> Callable[[], bool]:
        return lambda: procs.tcp_ok(port)

    started: list[procs.ManagedProcess] = []
    flags: list[str] = []
    for name, config in (("authz", ["--policy", str(mesh / "policy.yaml")]),
                         ("ratelimit", ["--config", str(mesh / "ratelimit.yaml")]),
                         ("telemetry", [])):
        port, admin = SERVICES[name]
        started.append(hosts.process(
            "cp", name, [*mixer, name, *config, "--listen", f"{CP}:{port}",
                         "--admin", f"127.0.0.1:{admin}"],
            logs / f"{name}.log", healthz(admin)))
        flags += [f"--{name}", f"{CP}:{port}"]
    started.append(hosts.process(
        "cp", "pilot", [*mixer, "pilot", "--mesh", str(mesh), "--listen", f"{CP}:{XDS}",
                        "--admin", f"127.0.0.1:{PILOT_ADMIN}", "--ca-dir", str(ca), *flags],
        logs / "pilot.log", healthz(PILOT_ADMIN)))
    envoy = procs.find_envoy()
    assert envoy is not None, "envoy not found (the 'envoy' extra)"
    for host, app, port, call in (
            ("h1", "frontend", FRONTEND_APP,
             ["--call", f"http://127.0.0.1:{FRONTEND_OUT}", "--call-host", "backend"]),
            ("h2", "backend", BACKEND_APP, [])):
        started.append(hosts.process(
            host, app, [sys.executable, "-m", "envoy_mixer.dev.demo.app", "--name", app,
                        "--port", str(port), *call],
            logs / f"{app}.log", listening(port)))
        bootstrap = tmp_path / f"{app}-envoy.yaml"
        bootstrap.write_text(_bootstrap(f"{app}-0", app, certs[app]))
        started.append(hosts.process(
            host, f"envoy {app}", [envoy, "-c", str(bootstrap), "--disable-hot-restart",
                                   "--concurrency", "1", "--log-level", "warning"],
            logs / f"envoy-{app}.log",
            lambda: procs.http_ok(f"http://127.0.0.1:{ENVOY_ADMIN}/ready")))
    # Started together, awaited together: the start-ups overlap.
    for proc in started:
        proc.wait_ready(30)
    return certs


def test_mtls_across_hosts_strict_inbound_and_a_policy_edit_everywhere_within_2s(
    hosts: Hosts, tmp_path: Path,
) -> None:
    """frontend (h1) -> backend (h2) over mTLS across the links with xDS from the pilot in cp;
    plaintext to h2's sidecar is refused (STRICT); a DENY policy appended to the mesh's policy
    file is enforced by both sidecars within 2 s of the write."""
    shutil.copytree(MESH, tmp_path / "mesh")
    certs = _start_mesh(hosts, tmp_path)
    frontend_out = f"http://127.0.0.1:{FRONTEND_OUT}"

    # The request crosses h1 -> cp -> h2; the backend's ALLOW policy names the frontend's
    # principal, so a 200 means h2's sidecar verified h1's client certificate.
    def through_frontend() -> bool:
        status, body = hosts.run("h1", lambda: _get(f"http://127.0.0.1:{FRONTEND_APP}/api/items"))
        return status == 200 and json.loads(body)["upstream"]["body"]["service"] == "backend"

    _eventually(through_frontend, "frontend (h1) -> backend (h2) through both sidecars")
    inbound = f"listener.{H2}_{BACKEND_IN}"
    backend_stats = _stats(hosts, "h2")
    assert backend_stats[f"{inbound}.ssl.handshake"] >= 1
    assert backend_stats.get(f"{inbound}.ssl.no_certificate", 0) == 0

    def telemetry_saw_mtls() -> bool:
        url = f"http://127.0.0.1:{SERVICES['telemetry'][1]}/metrics"
        text = hosts.run("cp", lambda: urllib.request.urlopen(url, timeout=3).read().decode())
        return any('connection_security_policy="mutual_tls"' in line
                   and 'destination_workload="backend"' in line
                   for line in text.splitlines() if line.startswith("istio_requests_total{"))

    _eventually(telemetry_saw_mtls, "telemetry: the backend's inbound request was mutual_tls")

    # STRICT: plaintext from h1 straight to h2's sidecar gets no HTTP answer, and Envoy
    # counts the failed handshake.
    errors = backend_stats.get(f"{inbound}.ssl.connection_error", 0)
    assert hosts.run("h1", lambda: _plaintext_answer(H2, BACKEND_IN)) == b""
    _eventually(lambda: _stats(hosts, "h2").get(f"{inbound}.ssl.connection_error", 0) > errors,
                "h2's sidecar counted the plaintext attempt")

    # Each sidecar is polled on its own: h2's through the frontend's egress (nothing on h1's
    # outbound path authorizes), h1's by a mesh peer in cp over mTLS (a 403 without the
    # frontend app's JSON is its sidecar's own answer).
    def via_backend_sidecar() -> Response:
        return hosts.run("h1", lambda: _get(f"{frontend_out}{DENY_PATH}", host="backend"))

    def via_frontend_sidecar() -> Response:
        return hosts.run("cp", lambda: _mtls_get(certs["tester"], H1, FRONTEND_IN, DENY_PATH))

    assert via_backend_sidecar()[0] == 200
    before = via_frontend_sidecar()
    assert before[0] == 200 and json.loads(before[1])["upstream"]["status"] == 200

    policy = tmp_path / "mesh" / "policy.yaml"
    with policy.open("a") as out:
        out.write(DENY_POLICY)
    written = time.monotonic()
    enforced: dict[str, float] = {}
    while len(enforced) < 2 and time.monotonic() - written < POLICY_BOUND:
        for name, probe in (("backend", via_backend_sidecar), ("frontend", via_frontend_sidecar)):
            if name not in enforced:
                status, body = probe()
                if status == 403 and "upstream" not in body:
                    enforced[name] = time.monotonic() - written
        time.sleep(0.05)
    assert set(enforced) == {"backend", "frontend"}, (
        f"within {POLICY_BOUND}s only {enforced} enforced the DENY policy")
    # The denials are each sidecar's own ext_authz decisions.
    assert _stats(hosts, "h2")[f"http.{H2}_{BACKEND_IN}.ext_authz.denied"] >= 1
    assert _stats(hosts, "h1")[f"http.{H1}_{FRONTEND_IN}.ext_authz.denied"] >= 1
    # Paths the policy does not name still flow end to end.
    assert hosts.run("h1", lambda: _get(f"{frontend_out}/api/items", host="backend"))[0] == 200
