"""Real Envoy: mesh certificates from file SDS, client certs required, rotation under traffic.

The listener's DownstreamTlsContext reads ``default`` (the server cert) and ``ROOTCA`` (the mesh
root) from the files ``mixer ca`` writes, through ``path_config_source`` + ``watched_directory``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.ca import SpiffeId, create_root, init_ca, load_ca, write_bundle
from controlplane.ca.sds import sds_file_config

pytestmark = pytest.mark.slow

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy_config(listen: int, admin: int, sds_dir: Path) -> str:
    """One STRICT mTLS listener answering 200 with the peer's URI SAN in a header."""
    hcm = {
        "@type": HCM, "stat_prefix": "mtls", "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        "response_headers_to_add": [{"header": {
                            "key": "x-peer", "value": "%DOWNSTREAM_PEER_URI_SAN%"}}]}],
        }]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    tls = {
        "@type": TLS,
        "require_client_certificate": True,
        "common_tls_context": {
            "alpn_protocols": ["http/1.1"],
            "tls_certificate_sds_secret_configs": [sds_file_config(str(sds_dir), "default")],
            "validation_context_sds_secret_config": sds_file_config(str(sds_dir), "ROOTCA"),
        },
    }
    config = {
        # File SDS refuses to start without a node id and cluster.
        "node": {"id": "server.default", "cluster": "server"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "mtls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                "filters": [{"name": "envoy.filters.network.http_connection_manager",
                             "typed_config": hcm}],
            }],
        }]},
    }
    return json.dumps(config, indent=1)


class Client:
    """A TLS client trusting the mesh root, optionally presenting a certificate."""

    def __init__(self, port: int, root: Path, cert: Path | None = None,
                 key: Path | None = None) -> None:
        self.port = port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # SPIFFE certs carry no DNS name: trust is the chain to the mesh root, checked here;
        # the server's identity is checked from its URI SAN by the test itself.
        self.context.check_hostname = False
        self.context.load_verify_locations(cafile=str(root))
        if cert is not None and key is not None:
            self.context.load_cert_chain(str(cert), str(key))

    def get(self) -> tuple[int, str, int]:
        """One request on a new connection: (status, x-peer header, server cert serial)."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10,
                                           context=self.context)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            serial = x509.load_der_x509_certificate(der).serial_number
            return resp.status, resp.getheader("x-peer") or "", serial
        finally:
            conn.close()


def _outcome(client: Client) -> str:
    """"refused" by the server, "client_check_failed" if our own side gave up, or "accepted".

    The server's alert (certificate required / unknown CA / expired) or a bare reset, which
    races with it, both count as refused.
    """
    try:
        client.get()
    except ssl.SSLCertVerificationError:
        return "client_check_failed"
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return "refused"
    return "accepted"


def key_bytes(key: Any) -> bytes:
    """PKCS#8 PEM of a private key."""
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _write_pair(directory: Path, cert: bytes, key: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert)
    (directory / "key.pem").write_bytes(key)
    return directory / "cert.pem", directory / "key.pem"


def test_mtls_from_file_sds_and_rotation_under_traffic(
    tmp_path: Path, start_envoy: Callable[..., Any], free_port: Callable[[], int],
    ca_factory: Callable[..., Any], pem: Callable[..., bytes],
) -> None:
    """Mesh client 200; no/self-signed/foreign/expired cert refused; rotation loses nothing."""
    now = datetime.now(UTC)
    init_ca(tmp_path / "ca", "cluster.local", clock=lambda: now)
    ca = load_ca(tmp_path / "ca")
    sds = tmp_path / "sds"
    write_bundle(sds, ca.issue(SpiffeId("cluster.local", "default", "server"), now=now))
    client_dir = write_bundle(tmp_path / "client",
                              ca.issue(SpiffeId("cluster.local", "default", "client"), now=now))

    listen, admin = free_port(), free_port()
    start_envoy(envoy_config(listen, admin, sds), admin)
    root = sds / "root-cert.pem"

    mesh = Client(listen, root, client_dir / "cert-chain.pem", client_dir / "key.pem")
    status, peer, old_serial = mesh.get()
    assert (status, peer) == (200, "spiffe://cluster.local/ns/default/sa/client")

    # Refused: no certificate, self-signed, another CA of the same trust domain, expired.
    self_signed, self_key = ca_factory("spiffe-impostor", ca=False)
    foreign = create_root("cluster.local", now=now).issue(
        SpiffeId("cluster.local", "default", "client"), now=now)
    expired = ca.issue(SpiffeId("cluster.local", "default", "client"),
                       now=now - timedelta(hours=3), ttl=timedelta(hours=1))
    bad = {
        "none": Client(listen, root),
        "self_signed": Client(listen, root, *_write_pair(
            tmp_path / "self", pem(self_signed), key_bytes(self_key))),
        "foreign_ca": Client(listen, root, *_write_pair(
            tmp_path / "foreign", foreign.chain_pem, foreign.key_pem())),
        "expired": Client(listen, root, *_write_pair(
            tmp_path / "expired", expired.chain_pem, expired.key_pem())),
    }
    assert {name: _outcome(c) for name, c in bad.items()} == dict.fromkeys(bad, "refused")

    # Rotate the server certificate while a bounded loop of requests runs.
    results: list[tuple[int, int] | str] = []
    halfway = threading.Event()

    def traffic() -> None:
        for i in range(200):
            if i == 50:
                halfway.set()
            try:
                status, _, serial = mesh.get()
                results.append((status, serial))
            except (ssl.SSLError, OSError, http.client.HTTPException) as exc:
                results.append(repr(exc))
        halfway.set()

    thread = threading.Thread(target=traffic)
    thread.start()
    halfway.wait(60)
    rotated = ca.issue(SpiffeId("cluster.local", "default", "server"), now=now)
    write_bundle(sds, rotated)
    thread.join(120)
    assert not thread.is_alive()
    failures = [r for r in results if isinstance(r, str) or r[0] != 200]
    assert failures == [] and len(results) == 200

    new_serial = rotated.certificate.serial_number
    served = {r[1] for r in results if not isinstance(r, str)}
    assert served <= {old_serial, new_serial}
    # Envoy applies the swap asynchronously: poll a bounded number of new connections.
    for _ in range(100):
        if mesh.get()[2] == new_serial:
            break
        threading.Event().wait(0.05)
    assert mesh.get()[2] == new_serial
