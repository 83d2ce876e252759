"""TLS and auth through the URL against a real TLS-only redis-server (its own CA, made here)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from envoy_mixer.dev import procs
from envoy_mixer.runtime.service import start
from envoy_mixer.runtime.settings import ServerSettings
from ratelimit.app import RateLimitSettings, build
from ratelimit.backends import CounterOp
from ratelimit.backends.redis import RedisBackend
from ratelimit.config import load_texts
from ratelimit.errors import BackendError
from ratelimit.limiter import Code, Descriptor, Limiter, LimiterSettings, Request

pytestmark = pytest.mark.slow

PASSWORD = "tls-s3cret"
LIMITS = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 3}\n"


@dataclass(frozen=True)
class TlsRedis:
    """TLS-only redis-servers (single and cluster): their TLS ports and the test PKI files."""

    port: int
    ca: Path
    cert: Path
    key: Path
    cluster_port: int

    def url(self, password: str = PASSWORD, query: str | None = None, scheme: str = "rediss",
            db: int = 0) -> str:
        """``rediss://:password@127.0.0.1:port/db?query`` (the CA option by default)."""
        if query is None:
            query = f"ssl_ca_certs={quote(str(self.ca))}"
        return f"{scheme}://:{password}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envoy-mixer test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca, cert, key = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(_pem_key(server_key))
    return ca, cert, key


def _tls_server(name: str, workdir: Path, files: tuple[Path, Path, Path], port: int,
                *extra: str) -> procs.ManagedProcess:
    """redis-server on TLS only (``--port 0``): the test certificates, a password, no disk."""
    binary = procs.find_redis_server()
    assert binary is not None, "redis-server not on PATH"
    ca, cert, key = files
    return procs.ManagedProcess(
        name=name, log_path=workdir / f"{name}.log",
        argv=[binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
              "--tls-cert-file", str(cert), "--tls-key-file", str(key),
              "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
              "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
              "--dir", str(workdir), *extra],
        # The plain port is off, so readiness is a TCP connect on the TLS port.
        ready=lambda: procs.tcp_ok(port),
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only redis-server requiring a password, and a TLS one-node cluster beside it.

    Both start here: a new cluster master waits ~2 s before it reports ``cluster_state:ok``,
    which then passes while the other tests run.
    """
    workdir = tmp_path_factory.mktemp("tls-redis")
    files = make_certs(workdir)
    port, cluster_port = procs.free_port(), procs.free_port()
    single = _tls_server("redis-tls", workdir, files, port).start()
    cluster = _tls_server(
        "redis-tls-cluster", workdir, files, cluster_port, "--cluster-enabled", "yes",
        "--tls-cluster", "yes", "--cluster-config-file", str(workdir / "nodes.conf"),
        # The bus port defaults to port + 10000, which may not exist for a high free port.
        "--cluster-port", str(procs.free_port()),
    ).start()
    try:
        single.wait_ready(15)
        cluster.wait_ready(15)
        admin = redis.Redis(host="127.0.0.1", port=cluster_port, password=PASSWORD, ssl=True,
                            ssl_ca_certs=str(files[0]))
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        admin.close()
        yield TlsRedis(port, *files, cluster_port=cluster_port)
    finally:
        cluster.stop()
        single.stop()


def _config() -> Any:
    return load_texts([("t.yaml", LIMITS)])


async def _count(url: str, name: str) -> list[Code]:
    """Five hits on one descriptor limited to 3 per hour, through the Limiter: the codes."""
    backend = RedisBackend(url, timeout=1.0, prefix=f"tls:{name}:{time.time_ns()}:")
    limiter = Limiter(backend, LimiterSettings(local_cache=False))
    request = Request("d", (Descriptor((("k", name),)),))
    try:
        return [(await limiter.decide(_config(), request)).overall for _ in range(5)]
    finally:
        await backend.close()


async def test_tls_with_password_and_custom_ca_counts(tls_redis: TlsRedis) -> None:
    """rediss:// with the password and ssl_ca_certs: verified TLS, limit 3 -> 3 OK then OVER."""
    codes = await _count(tls_redis.url(), "ca")
    assert codes == [Code.OK] * 3 + [Code.OVER_LIMIT] * 2


async def test_tls_hostname_check_and_select_db(tls_redis: TlsRedis) -> None:
    """The server name (localhost, in the certificate) is checked; SELECT works over TLS."""
    url = tls_redis.url(db=3).replace("127.0.0.1", "localhost")
    assert await _count(url, "host") == [Code.OK] * 3 + [Code.OVER_LIMIT] * 2


async def test_tls_without_verification_option(tls_redis: TlsRedis) -> None:
    """``ssl_cert_reqs=none`` connects without knowing the CA (and still counts)."""
    codes = await _count(tls_redis.url(query="ssl_cert_reqs=none"), "none")
    assert codes[:4] == [Code.OK] * 3 + [Code.OVER_LIMIT]


async def test_tls_unknown_ca_is_rejected(tls_redis: TlsRedis) -> None:
    """Without the CA option the system trust store rejects the test CA: a connection error."""
    backend = RedisBackend(tls_redis.url(query=""), timeout=1.0)
    try:
        with pytest.raises(BackendError) as info:
            await backend.apply([CounterOp("k_1", 1, 60)])
    finally:
        await backend.close()
    assert info.value.kind == "connection"
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_tls_wrong_password_is_connection_error(tls_redis: TlsRedis) -> None:
    """A wrong password over TLS: BackendError(kind=connection), and the backend is unhealthy."""
    backend = RedisBackend(tls_redis.url(password="wrong"), timeout=1.0)
    try:
        with pytest.raises(BackendError) as info:
            await backend.apply([CounterOp("k_1", 1, 60)])
        assert not await backend.ping()
    finally:
        await backend.close()
    assert info.value.kind == "connection"
    assert "WRONGPASS" in str(info.value)
    assert not backend.healthy()


async def test_plain_redis_against_tls_port_fails_within_timeout(tls_redis: TlsRedis) -> None:
    """redis:// (no TLS) against the TLS-only port fails as a BackendError within the timeout."""
    backend = RedisBackend(tls_redis.url(scheme="redis", query=""), timeout=0.3)
    try:
        # A generous bound, far above the 0.3 s timeout: reaching it means the call hung.
        with pytest.raises(BackendError) as info:
            async with asyncio.timeout(10):
                await backend.apply([CounterOp("k_1", 1, 60)])
    finally:
        await backend.close()
    # Redis reads the AUTH command as a broken TLS record and resets the connection at once.
    assert info.value.kind == "connection"


async def test_wrong_password_answers_unavailable(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """In the service, a TLS backend refusing the password answers ShouldRateLimit UNAVAILABLE."""
    (tmp_path / "d.yaml").write_text(LIMITS)
    app = build(RateLimitSettings(config=tmp_path, backend="redis", redis_timeout=1.0,
                                  redis_url=tls_redis.url(password="wrong")))
    running = await start(app.service, ServerSettings(
        service="ratelimit", listen="127.0.0.1:0", admin="127.0.0.1:0"))
    request = rls_pb2.RateLimitRequest(domain="d", descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="k", value="u")])])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(request,
                                                                                timeout=5)
    finally:
        await running.stop(0)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "WRONGPASS" in (info.value.details() or "")


def test_service_process_over_tls(tls_redis: TlsRedis, tmp_path: Path,
                                  start_mixer: Callable[..., Any]) -> None:
    """``mixer ratelimit --backend redis --redis-url rediss://...``: healthy, counts, redacts."""
    import urllib.request

    (tmp_path / "limits").mkdir()
    (tmp_path / "limits" / "d.yaml").write_text(LIMITS)
    grpc_port, admin_port = procs.free_port(), procs.free_port()
    url = tls_redis.url()
    start_mixer(["ratelimit", "--config", str(tmp_path / "limits"), "--listen",
                 f"127.0.0.1:{grpc_port}", "--admin", f"127.0.0.1:{admin_port}",
                 "--backend", "redis", "--redis-url", url, "--redis-timeout", "1",
                 "--redis-prefix", f"tls:proc:{time.time_ns()}:"], admin_port)
    body = json.dumps({"domain": "d", "descriptors": [{"entries": [{"key": "k", "value": "p"}]}]})
    statuses = []
    for _ in range(4):
        req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/json", data=body.encode(),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                statuses.append(resp.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
    assert statuses == [200, 200, 200, 429]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/config", timeout=5) as resp:
        config = resp.read().decode()
    assert PASSWORD not in config


async def test_sentinel_mode_master_over_tls(tls_redis: TlsRedis, tmp_path: Path) -> None:
    """Sentinel mode with rediss://: plain Sentinel, TLS master checked against ssl_ca_certs."""
    sentinel_port = procs.free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"tls-replication yes\ntls-cert-file {tls_redis.cert}\ntls-key-file {tls_redis.key}\n"
        f"tls-ca-cert-file {tls_redis.ca}\n"
        f"sentinel monitor mymaster 127.0.0.1 {tls_redis.port} 1\n"
        f"sentinel auth-pass mymaster {PASSWORD}\n"
    )
    sentinel = procs.ManagedProcess(
        name="sentinel", argv=["redis-server", str(conf), "--sentinel"],
        log_path=tmp_path / "sentinel.log", ready=lambda: procs.tcp_ok(sentinel_port),
    ).start()
    ca = quote(str(tls_redis.ca))
    try:
        sentinel.wait_ready(15)
        good = RedisBackend(f"rediss://:{PASSWORD}@127.0.0.1:{sentinel_port}/mymaster"
                            f"?ssl_ca_certs={ca}", mode="sentinel", timeout=1.0,
                            prefix=f"tls:sentinel:{time.time_ns()}:")
        unknown_ca = RedisBackend(f"rediss://:{PASSWORD}@127.0.0.1:{sentinel_port}/mymaster",
                                  mode="sentinel", timeout=1.0)
        try:
            assert await good.apply([CounterOp("k_1", 3, 60)]) == [3]
            with pytest.raises(BackendError) as info:
                await unknown_ca.apply([CounterOp("k_1", 1, 60)])
            assert info.value.kind == "connection"
        finally:
            await good.close()
            await unknown_ca.close()
    finally:
        sentinel.stop()


async def test_cluster_mode_over_tls(tls_redis: TlsRedis) -> None:
    """Cluster mode (redis-py) over TLS: the URL's CA option and password reach the node."""
    admin = redis.Redis(host="127.0.0.1", port=tls_redis.cluster_port, password=PASSWORD,
                        ssl=True, ssl_ca_certs=str(tls_redis.ca))
    try:
        for _ in range(100):
            if b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.05)
    finally:
        admin.close()
    url = (f"rediss://:{PASSWORD}@127.0.0.1:{tls_redis.cluster_port}"
           f"?ssl_ca_certs={quote(str(tls_redis.ca))}")
    backend = RedisBackend(url, mode="cluster", timeout=1.0)
    try:
        assert await backend.ping(5.0)  # reads the slot map, as the service does at startup
        ops = [CounterOp(f"d_k_{i}_60", 1, 60) for i in range(5)]
        assert await backend.apply(ops) == [1] * 5
        assert await backend.apply(ops) == [2] * 5
    finally:
        await backend.close()
