"""Bytes over a TCP port between two real Envoys configured only by ``mixer pilot`` (slow)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envoy_mixer.dev import procs
from tests.controlplane.xds.mesh_run import bootstrap, eventually, issue

pytestmark = pytest.mark.slow

Start = Callable[..., procs.ManagedProcess]
TCP_IN = Path(__file__).resolve().parents[1] / "pilot" / "testdata" / "tcp-in" / "mesh.yaml"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on a free loopback port: the database app."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _round_trip(port: int, payload: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload) and (chunk := conn.recv(4096)):
            got += chunk
    return got == payload


def test_client_reaches_the_database_over_strict_mtls_tcp(
    tmp_path: Path, start_envoy: Start, start_mixer: Start, free_port: Callable[[], int],
    echo: int,
) -> None:
    """client app -> client sidecar's TCP egress -> (ISTIO_MUTUAL) -> db sidecar's STRICT TCP
    inbound -> the echo app: the bytes come back (tcp-in/ on free ports, mesh CA on)."""
    inbound, outbound = free_port(), free_port()
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "mesh.yaml").write_text(
        TCP_IN.read_text().replace("10.0.0.5", "127.0.0.1")
        .replace("15432", str(inbound)).replace("15433", str(outbound))
        .replace("127.0.0.1:5432", f"127.0.0.1:{echo}").replace("bind: 0.0.0.0",
                                                               "bind: 127.0.0.1"))
    ca = tmp_path / "ca"
    certs = {n: issue(ca, tmp_path / "certs" / n, "data", n) for n in ("db", "client")}
    xds, admin = free_port(), free_port()
    start_mixer(["pilot", "--mesh", str(mesh), "--listen", f"127.0.0.1:{xds}",
                 "--admin", f"127.0.0.1:{admin}", "--ca-dir", str(ca)], admin)
    for workload, app in (("db-0", "db"), ("client", "client")):
        envoy_admin = free_port()
        start_envoy(bootstrap(workload, app, xds, envoy_admin, certs[app], namespace="data"),
                    envoy_admin, name=app)
    eventually(lambda: _round_trip(outbound, b"ping over tcp\n"), timeout=20,
               what="bytes through both sidecars")
    # STRICT: a plaintext peer dialling the db sidecar directly gets nothing back (Envoy
    # closes or resets the failed handshake).
    try:
        echoed = _round_trip(inbound, b"plaintext\n")
    except OSError:
        echoed = False
    assert not echoed
