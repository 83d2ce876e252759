"""End to end under mTLS: two real Envoys, certificates made here, both reporting to us.

frontend sidecar (originates TLS with the frontend's SPIFFE certificate, checks the backend's SAN)
-> backend sidecar (requires a client certificate), for one HTTP request and one TCP flow. Both
reporters' series must say ``mutual_tls`` and carry both principals, and a TCP connection must
open and close in the same series. Forged peer-metadata headers sent straight to the backend,
on a plaintext listener and under a certificate of another identity, must change no label.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.parser import text_string_to_metric_families

from envoy_mixer.dev import procs
from envoy_mixer.runtime.service import start
from envoy_mixer.runtime.settings import ServerSettings
from telemetry.app import build
from telemetry.identity import encode_peer_header

pytestmark = pytest.mark.slow

SERVICE = "backend.default.svc.cluster.local"
FRONTEND_SAN = "spiffe://cluster.local/ns/default/sa/frontend"
BACKEND_SAN = "spiffe://cluster.local/ns/default/sa/backend"
INTRUDER_SAN = "spiffe://cluster.local/ns/default/sa/intruder"


def _meta(name: str, version: str) -> dict[str, Any]:
    # SERVICE_ACCOUNT as in Istio's node metadata: it ties the peer header to the certificate.
    return {"NAME": f"{name}-0", "NAMESPACE": "default", "WORKLOAD_NAME": name,
            "SERVICE_ACCOUNT": name, "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": name, "version": version,
                       "service.istio.io/canonical-name": name,
                       "service.istio.io/canonical-revision": version}}


FRONTEND_META = _meta("frontend", "v1")
BACKEND_META = _meta("backend", "v2")
#: The headers an attacker sends: another namespace's admin, and a frontend variant whose
#: account is not the intruder certificate's.
FORGED_ADMIN = encode_peer_header({**_meta("admin", "v9"), "NAMESPACE": "kube-system"})
FORGED_FRONTEND = encode_peer_header({**FRONTEND_META, "WORKLOAD_NAME": "frontend-forged",
                                      "LABELS": {"app": "frontend", "version": "v9"}})


def _side(prefix: str, meta: dict[str, Any], principal: str) -> dict[str, str]:
    labels = meta["LABELS"]
    return {f"{prefix}_workload": meta["WORKLOAD_NAME"],
            f"{prefix}_workload_namespace": "default", f"{prefix}_principal": principal,
            f"{prefix}_app": labels["app"], f"{prefix}_version": labels["version"],
            f"{prefix}_canonical_service": meta["WORKLOAD_NAME"],
            f"{prefix}_canonical_revision": labels["version"],
            f"{prefix}_cluster": "Kubernetes"}


def _series(reporter: str, protocol: str, **rest: str) -> dict[str, str]:
    return {"reporter": reporter, **_side("source", FRONTEND_META, FRONTEND_SAN),
            **_side("destination", BACKEND_META, BACKEND_SAN),
            "destination_service": SERVICE, "destination_service_name": "backend",
            "destination_service_namespace": "default", "request_protocol": protocol,
            "response_flags": "-", "connection_security_policy": "mutual_tls", **rest}


# ----------------------------------------------------------------------------- certificates


def _certificates(directory: Path) -> dict[str, tuple[str, str]]:
    """A root and one SPIFFE leaf per identity: {name: (cert path, key path)}, plus "root"."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(hours=1))
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mesh root")])
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256()))
    (directory / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    out = {"root": (str(directory / "root.pem"), "")}
    for name, uri in (("frontend", FRONTEND_SAN), ("backend", BACKEND_SAN),
                      ("intruder", INTRUDER_SAN)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(root_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(validity[0]).not_valid_after(validity[1])
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(uri)]), critical=True)
                .add_extension(x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False)
                .sign(root_key, hashes.SHA256()))
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        out[name] = (str(cert_path), str(key_path))
    return out


# ----------------------------------------------------------------------------- Envoy configs


def _tls_context(certs: dict[str, tuple[str, str]], name: str) -> dict[str, Any]:
    cert, key = certs[name]
    return {"tls_certificates": [{"certificate_chain": {"filename": cert},
                                  "private_key": {"filename": key}}],
            "validation_context": {"trusted_ca": {"filename": certs["root"][0]}}}


def _upstream_tls(certs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Istio's ISTIO_MUTUAL by hand: our certificate, and the backend's SAN or no connection."""
    context = _tls_context(certs, "frontend")
    context["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": BACKEND_SAN}}]
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "UpstreamTlsContext",
        "common_tls_context": context}}


def _downstream_tls(certs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """STRICT: a client certificate signed by the mesh root is required."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                 "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _tls_context(certs, "backend")}}


def _logger(kind: str, log_name: str) -> list[dict[str, Any]]:
    """The ALS logger, with the tags telemetry reads (services, upstream SANs)."""
    common = {
        "log_name": log_name, "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "mixer_telemetry"}, "timeout": "1s"},
        "buffer_flush_interval": "0.05s",
        "custom_tags": [
            {"tag": "istio.services", "metadata": {
                "kind": {"cluster": {}},
                "metadata_key": {"key": "istio", "path": [{"key": "services"}]}}},
            {"tag": "upstream_peer_uri_san", "value": "%UPSTREAM_PEER_URI_SAN%"},
            {"tag": "upstream_local_uri_san", "value": "%UPSTREAM_LOCAL_URI_SAN%"},
        ],
    }
    typed: dict[str, Any] = {"common_config": common}
    if kind == "http":
        typed["@type"] = ("type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
                          "HttpGrpcAccessLogConfig")
        typed["additional_request_headers_to_log"] = ["x-mixer-peer-metadata"]
        typed["additional_response_headers_to_log"] = ["x-mixer-peer-metadata"]
        name = "envoy.access_loggers.http_grpc"
    else:
        typed["@type"] = ("type.googleapis.com/envoy.extensions.access_loggers.grpc.v3."
                          "TcpGrpcAccessLogConfig")
        name = "envoy.access_loggers.tcp_grpc"
    return [{"name": name, "typed_config": typed}]


def _http(cluster: str, log_name: str, header: tuple[str, str]) -> dict[str, Any]:
    """An HTTP connection manager to ``cluster`` adding our peer-metadata header."""
    direction, value = header
    add = [{"header": {"key": "x-mixer-peer-metadata", "value": value},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    route_config: dict[str, Any] = {"virtual_hosts": [{
        "name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}
    route_config[f"{direction}_headers_to_add"] = add
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": log_name, "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "access_log": _logger("http", log_name)}}


def _tcp(cluster: str, log_name: str) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": log_name, "cluster": cluster,
        "access_log_options": {"flush_access_log_on_connected": True},
        "access_log": _logger("tcp", log_name)}}


def _listener(name: str, port: int, network_filter: dict[str, Any],
              tls: dict[str, Any] | None = None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": [network_filter]}
    if tls is not None:
        chain["transport_socket"] = tls
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [chain]}


def _cluster(name: str, port: int, *, tls: dict[str, Any] | None = None,
             http2: bool = False, service: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}}}}]}]}}
    if tls is not None:
        cluster["transport_socket"] = tls
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    if service:  # Istio's inbound-cluster metadata: the service served on this port
        cluster["metadata"] = {"filter_metadata": {"istio": {"services": [
            {"host": SERVICE, "name": "backend", "namespace": "default"}]}}}
    return cluster


def _bootstrap(node_id: str, meta: dict[str, Any], admin: int, listeners: list[Any],
               clusters: list[Any], telemetry_port: int) -> str:
    return yaml.safe_dump({
        "node": {"id": node_id, "cluster": f"{meta['WORKLOAD_NAME']}.default",
                 "metadata": meta},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [
            *clusters, _cluster("mixer_telemetry", telemetry_port, http2=True)]},
    }, sort_keys=False)


# ----------------------------------------------------------------------------- helpers


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(1024))
    await writer.drain()
    writer.close()


async def _get(url: str, headers: dict[str, str] | None = None,
               ssl_context: ssl.SSLContext | None = None) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers, ssl=ssl_context if ssl_context is not None else False) as resp:
        return resp.status


def _samples(text: str) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append({**s.labels, "__value__": str(s.value)})
    return out


async def test_mtls_labels_on_both_reporters_and_forged_headers_change_nothing(
    start_envoy: Callable[..., procs.ManagedProcess], free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    """mutual_tls and both principals on both reporters (HTTP, TCP); forgeries change no label."""
    certs = _certificates(tmp_path)
    ports = {name: free_port() for name in (
        "app", "echo", "f_admin", "f_http", "f_tcp", "b_admin", "b_http", "b_tcp", "b_plain")}
    config = tmp_path / "telemetry.yaml"
    config.write_text("graph:\n  window_seconds: 60\n")
    telemetry = build(config)
    running = await start(telemetry.service, ServerSettings(
        service="telemetry", listen="127.0.0.1:0", admin="127.0.0.1:0"))
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    echo = await asyncio.start_server(_echo, "127.0.0.1", ports["echo"])
    registry = telemetry.registry

    async def wait_for(http: int, tcp: int = 0) -> None:
        for _ in range(200):
            got_http = registry.get_sample_value(
                "mixer_telemetry_entries_processed_total", {"type": "http"}) or 0
            got_tcp = registry.get_sample_value(
                "mixer_telemetry_entries_processed_total", {"type": "tcp"}) or 0
            if got_http >= http and got_tcp >= tcp:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"entries missing: http {got_http}/{http}, tcp {got_tcp}/{tcp}")

    try:
        await web.TCPSite(runner, "127.0.0.1", ports["app"]).start()
        backend = _bootstrap(
            "sidecar~127.0.0.1~backend-0.default~default.svc.cluster.local", BACKEND_META,
            ports["b_admin"], [
                _listener("inbound_http", ports["b_http"], _http(
                    "inbound|8080||", "inbound",
                    ("response", encode_peer_header(BACKEND_META))), _downstream_tls(certs)),
                _listener("inbound_tcp", ports["b_tcp"], _tcp("inbound|9000||", "inbound_tcp"),
                          _downstream_tls(certs)),
                # PERMISSIVE's plaintext side, as a second listener.
                _listener("inbound_plain", ports["b_plain"], _http(
                    "inbound|8080||", "inbound",
                    ("response", encode_peer_header(BACKEND_META)))),
            ], [_cluster("inbound|8080||", ports["app"], service=True),
                _cluster("inbound|9000||", ports["echo"], service=True)], running.grpc_port)
        frontend = _bootstrap(
            "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local", FRONTEND_META,
            ports["f_admin"], [
                _listener("outbound_http", ports["f_http"], _http(
                    f"outbound|8080||{SERVICE}", "outbound",
                    ("request", encode_peer_header(FRONTEND_META)))),
                _listener("outbound_tcp", ports["f_tcp"],
                          _tcp(f"outbound|9000||{SERVICE}", "outbound_tcp")),
            ], [_cluster(f"outbound|8080||{SERVICE}", ports["b_http"], tls=_upstream_tls(certs)),
                _cluster(f"outbound|9000||{SERVICE}", ports["b_tcp"], tls=_upstream_tls(certs))],
            running.grpc_port)
        await asyncio.to_thread(start_envoy, backend, ports["b_admin"], name="backend")
        await asyncio.to_thread(start_envoy, frontend, ports["f_admin"], name="frontend")

        # HTTP through both sidecars; both reporters' entries first, so each side has logged
        # its own certificate before the TCP flow needs it to name the peer's workload.
        assert await _get(f"http://127.0.0.1:{ports['f_http']}/",
                          {"Host": SERVICE}) == 200
        await wait_for(http=2)
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["f_tcp"])
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(1024), 5) == b"ping"
        writer.close()
        await writer.wait_closed()
        await wait_for(http=2, tcp=4)  # open + close on each side

        # The forgeries, straight to the backend: plaintext, and under another identity's
        # certificate claiming to be (a variant of) the frontend.
        assert await _get(f"http://127.0.0.1:{ports['b_plain']}/",
                          {"x-mixer-peer-metadata": FORGED_ADMIN}) == 200
        intruder = ssl.create_default_context(cafile=certs["root"][0])
        intruder.check_hostname = False  # the backend's certificate names a SPIFFE id only
        intruder.load_cert_chain(*certs["intruder"])
        assert await _get(f"https://127.0.0.1:{ports['b_http']}/",
                          {"x-mixer-peer-metadata": FORGED_FRONTEND}, intruder) == 200
        await wait_for(http=4, tcp=4)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{running.admin_port}/metrics") as resp:
            samples = _samples(await resp.text())
    finally:
        await running.stop(0)
        echo.close()
        await runner.cleanup()

    def value(name: str, labels: dict[str, str]) -> float | None:
        found = [float(s["__value__"]) for s in samples.get(name, [])
                 if {k: v for k, v in s.items() if k != "__value__"} == labels]
        return found[0] if found else None

    # HTTP: both reporters, mutual_tls, both principals, every identity label.
    for reporter in ("source", "destination"):
        series = _series(reporter, "http", response_code="200", grpc_response_status="")
        assert value("istio_requests_total", series) == 1, reporter
    # TCP: the certificates name both workloads; opened and closed in the same series.
    for reporter in ("source", "destination"):
        series = _series(reporter, "tcp")
        for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"):
            assert value(name, series) == 1, (reporter, name)
        assert value("istio_tcp_received_bytes_total", series) == 4, reporter
        assert value("istio_tcp_sent_bytes_total", series) == 4, reporter
    opened = {tuple(sorted(s.items())) for s in samples["istio_tcp_connections_opened_total"]}
    closed = {tuple(sorted(s.items())) for s in samples["istio_tcp_connections_closed_total"]}
    assert opened == closed

    # The forgeries: no forged value anywhere, each request counted under what it proved.
    text_values = {v for series in samples.values() for s in series for v in s.values()}
    assert not text_values & {"admin", "kube-system", "frontend-forged", "v9"}
    plain = [s for s in samples["istio_requests_total"]
             if s["connection_security_policy"] == "none"]
    assert [(s["source_workload"], s["source_principal"], s["__value__"]) for s in plain] == [
        ("unknown", "unknown", "1.0")]
    intruded = [s for s in samples["istio_requests_total"] if s["source_principal"] == INTRUDER_SAN]
    assert [(s["source_workload"], s["source_app"], s["connection_security_policy"])
            for s in intruded] == [("intruder", "unknown", "mutual_tls")]
