"""The lean single-node Redis client: URLs, pipelining order, NOSCRIPT, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis

from envoy_mixer.dev import procs
from ratelimit.backends import CounterOp
from ratelimit.backends.redis import RedisBackend
from ratelimit.backends.resp import (
    ConnectionSettings,
    ReplyError,
    RespClient,
    RespConnectionError,
    pack,
)
from ratelimit.errors import BackendError


def test_url_parsing() -> None:
    """redis://, rediss:// and unix:// URLs give host/port/path, db, credentials and TLS."""
    s = ConnectionSettings.from_url("redis://user:p%40ss@redis.local:6380/3")
    assert (s.host, s.port, s.db, s.username, s.password, s.ssl) == (
        "redis.local", 6380, 3, "user", "p@ss", None)
    assert s.handshake() == [pack([b"AUTH", b"user", b"p@ss"]), pack([b"SELECT", b"3"])]
    assert ConnectionSettings.from_url("redis://127.0.0.1").handshake() == []
    u = ConnectionSettings.from_url("unix:///run/redis.sock?db=2&password=pw")
    assert (u.path, u.db, u.password) == ("/run/redis.sock", 2, "pw")
    t = ConnectionSettings.from_url("rediss://:pw@h:6379/0?ssl_cert_reqs=none")
    assert t.ssl is not None and t.ssl.verify_mode == ssl.CERT_NONE
    assert t.server_hostname == "h" and t.handshake() == [pack([b"AUTH", b"pw"])]
    with pytest.raises(ValueError):
        ConnectionSettings.from_url("memcache://h:1")


def test_tls_url_options_are_checked() -> None:
    """TLS query options: a bad ssl_cert_reqs or unreadable CA file is a ValueError naming it."""
    with pytest.raises(ValueError, match="invalid ssl_cert_reqs 'bogus'"):
        ConnectionSettings.from_url("rediss://h/0?ssl_cert_reqs=bogus")
    with pytest.raises(ValueError, match=r"cannot load ssl_ca_certs '/nonexistent/ca\.pem'"):
        ConnectionSettings.from_url("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem")
    # No certificate check implies no host name check (an ssl context refuses both together).
    t = ConnectionSettings.from_url("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true")
    assert t.ssl is not None and (t.ssl.verify_mode, t.ssl.check_hostname) == (ssl.CERT_NONE,
                                                                              False)
    r = ConnectionSettings.from_url("rediss://h/0")
    assert r.ssl is not None and (r.ssl.verify_mode, r.ssl.check_hostname) == (
        ssl.CERT_REQUIRED, True)


async def test_pipelined_replies_reach_their_callers_in_order(redis_url: str) -> None:
    """Hundreds of commands in flight on one connection each get their own reply."""
    client = RespClient(redis_url, timeout=2.0, pool_size=1)
    try:
        replies = await asyncio.gather(
            *(client.call(pack([b"INCR", b"n"])) for _ in range(300)),
            *(client.call(pack([b"ECHO", b"%d" % i])) for i in range(50)),
        )
        error = await client.call(pack([b"NOSUCHCOMMAND"]))
    finally:
        await client.close()
    assert replies[:300] == list(range(1, 301))
    assert replies[300:] == [b"%d" % i for i in range(50)]
    assert isinstance(error, ReplyError)


async def test_script_reloaded_after_script_flush(redis_url: str) -> None:
    """After SCRIPT FLUSH, a NOSCRIPT reply is answered by one EVAL; EVALSHA works again."""
    backend = RedisBackend(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert await backend.apply([CounterOp("k_1", 1, 60)]) == [1]
        admin.script_flush()
        admin.config_resetstat()
        assert await backend.apply([CounterOp("k_1", 1, 60)]) == [2]
        assert await backend.apply([CounterOp("k_1", 1, 60)]) == [3]
        stats = admin.info("commandstats")
    finally:
        await backend.close()
        admin.close()
    assert stats["cmdstat_eval"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] == 2  # the NOSCRIPT one and the last one


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """Start/restart a redis-server on one port this test may kill or stop."""
    port = procs.free_port()
    started: list[procs.ManagedProcess] = []

    def start(*extra: str) -> procs.ManagedProcess:
        proc = procs.redis_process(port, tmp_path, extra=list(extra)).start()
        started.append(proc)
        proc.wait_ready(15)
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for proc in started:
        proc.signal(signal.SIGCONT)
        proc.stop()


async def test_timeout_resets_connection_and_recovers(own_redis: Any) -> None:
    """A stalled Redis: the call fails within the timeout; once it resumes, calls work again."""
    proc = own_redis()
    client = RespClient(f"redis://127.0.0.1:{own_redis.port}", timeout=0.2, pool_size=1)
    try:
        assert await client.call(pack([b"PING"])) == b"PONG"
        proc.signal(signal.SIGSTOP)
        # The client's 0.2 s timeout fires long before this generous bound on a hang.
        async with asyncio.timeout(10):
            with pytest.raises(TimeoutError):
                await client.call(pack([b"PING"]))
        proc.signal(signal.SIGCONT)
        assert await client.call(pack([b"PING"])) == b"PONG"  # on a fresh connection
    finally:
        await client.close()


async def test_reconnects_with_backoff_after_restart(own_redis: Any) -> None:
    """Redis gone: calls fail fast (no reconnect storm); restarted: ping and calls succeed."""
    proc = own_redis()
    client = RespClient(f"redis://127.0.0.1:{own_redis.port}", timeout=0.2, pool_size=2)
    try:
        assert await client.call(pack([b"SET", b"a", b"1"])) == b"OK"
        proc.stop()
        errors = []
        for _ in range(5):
            with pytest.raises(RespConnectionError) as info:
                await client.call(pack([b"GET", b"a"]))
            errors.append(str(info.value))
        # After the first failed connect, calls fail at once without reconnecting (no storm).
        assert any("reconnect backing off" in e for e in errors[1:]), errors
        own_redis()
        assert await client.ping()
        await asyncio.sleep(1.1)  # past the longest backoff
        assert await client.call(pack([b"GET", b"a"])) is None  # a fresh, empty Redis
        assert await client.call(pack([b"GET", b"a"])) is None  # and the other connection
    finally:
        await client.close()


@pytest.mark.slow
async def test_unix_socket_with_password_and_db(own_redis: Any, tmp_path: Path) -> None:
    """unix:// with password and db: AUTH and SELECT on connect; the backend counts there."""
    sock = tmp_path / "redis.sock"
    own_redis("--unixsocket", str(sock), "--requirepass", "pw")
    backend = RedisBackend(f"unix://{sock}?db=5&password=pw")
    try:
        assert await backend.ping()
        assert await backend.apply([CounterOp("k_1", 2, 60)]) == [2]
    finally:
        await backend.close()
    admin = redis.Redis(unix_socket_path=str(sock), password="pw", db=5)
    assert admin.get("mixer:rl:k_1") == b"2"
    admin.close()
    wrong = RedisBackend(f"unix://{sock}?password=nope")
    try:
        with pytest.raises(BackendError) as info:
            await wrong.apply([CounterOp("k_1", 1, 60)])
        assert info.value.kind == "connection"
    finally:
        await wrong.close()
