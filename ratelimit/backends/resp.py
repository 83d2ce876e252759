"""A lean single-node Redis client: pipelined RESP over a few ``asyncio.Protocol`` connections.

Why not redis-py here: measured, its asyncio client (stream reader/writer, generic command
path, per-call connection checks) cost ~250 µs of CPU per script call, more than everything else
a ShouldRateLimit costs over gRPC. This client writes already-encoded commands straight to the
transport and parses replies with hiredis inside ``data_received``, resolving one future per
command in FIFO order (Redis answers a connection's commands in the order it received them).

- ``pool_size`` connections, used round robin; commands are pipelined on each (no waiting for
  a free connection).
- Every call is bounded by ``timeout`` (connecting, handshake and reply together). A timed-out
  command leaves its connection in an unknown state (Redis stalled, reply still owed), so that
  connection is closed: its other callers fail at once, the next call reconnects.
- Reconnects by itself; after a failed connect, calls fail at once (no connect storm against a
  dead server) until a backoff (50 ms doubling to 1 s) has passed. ``ping`` always tries.
- URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``, parsed by ``ratelimit.backends.url``
  (the same parser feeds redis-py for Cluster and Sentinel). AUTH and SELECT are sent on every
  new connection.

Cluster and Sentinel stay on redis-py (slot routing and failover are not worth redoing).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis

from ratelimit.backends.url import parse_redis_url

__all__ = ["ConnectionSettings", "ReplyError", "RespClient", "RespConnectionError", "pack"]

_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 1.0


class ReplyError(Exception):
    """An error reply from Redis (``NOSCRIPT ...``, ``WRONGTYPE ...``)."""


class RespConnectionError(ConnectionError):
    """Redis could not be reached, refused the handshake, or dropped the connection."""


def pack(args: Sequence[bytes]) -> bytes:
    """RESP encoding of one command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where and how to connect, parsed from a URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None

    @classmethod
    def from_url(cls, url: str) -> ConnectionSettings:
        """Settings for a single-node URL (``ratelimit.backends.url``); raises RedisUrlError."""
        parsed = parse_redis_url(url)
        if parsed.path is not None:
            return cls(path=parsed.path, db=parsed.db, username=parsed.username,
                       password=parsed.password)
        context = parsed.tls.context() if parsed.tls is not None else None
        return cls(host=parsed.host, port=parsed.port, db=parsed.db, username=parsed.username,
                   password=parsed.password, ssl=context,
                   server_hostname=parsed.host if context else None)

    def handshake(self) -> list[bytes]:
        """Commands sent first on every connection (AUTH, SELECT), encoded."""
        out = []
        if self.password is not None:
            auth = [b"AUTH", self.password.encode()]
            if self.username:
                auth.insert(1, self.username.encode())
            out.append(pack(auth))
        if self.db:
            out.append(pack([b"SELECT", b"%d" % self.db]))
        return out


class _Connection(asyncio.Protocol):
    """One connection: writes commands, matches hiredis-parsed replies to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def request(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one command; the future gets its reply (a ReplyError instance for errors)."""
        if not self.open or self._transport is None:
            raise RespConnectionError("redis connection closed")
        future = self._loop.create_future()
        self._waiters.append(future)
        self._transport.write(packed)
        return future

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not waiters:
                    raise RespConnectionError("redis sent a reply nobody asked for")
                future = waiters.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, RespConnectionError) as exc:
            self.close(RespConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(RespConnectionError(f"redis connection lost: {exc or 'closed by server'}"))

    def close(self, reason: BaseException | None = None) -> None:
        """Close the connection; pending callers get ``reason`` (a connection error)."""
        self.open = False
        if self._transport is not None:
            self._transport.abort()
        self._fail(reason or RespConnectionError("redis connection closed"))

    def _fail(self, exc: BaseException) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(exc)


class RespClient:
    """``pool_size`` pipelined connections to one Redis server (see the module docstring)."""

    def __init__(self, url: str, *, timeout: float = 0.25, pool_size: int = 4) -> None:
        self.settings = ConnectionSettings.from_url(url)
        self.timeout = timeout
        self._conns: list[_Connection | None] = [None] * max(1, pool_size)
        self._connecting: list[asyncio.Future[_Connection] | None] = [None] * len(self._conns)
        self._next = 0
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN
        self._last_error = ""
        self._closed = False

    async def call(self, packed: bytes) -> Any:
        """Send one encoded command and return its reply (ReplyError instance for errors).

        Raises TimeoutError past ``timeout`` and RespConnectionError if Redis is unreachable.
        """
        index = self._next
        self._next = (index + 1) % len(self._conns)
        conn = self._conns[index]
        try:
            async with asyncio.timeout(self.timeout):
                if conn is None or not conn.open:
                    # (Re)connect within the same time budget as the reply.
                    conn = await self._connection(index, force=False)
                return await conn.request(packed)
        except TimeoutError:
            if conn is not None and conn.open:
                conn.close(RespConnectionError("redis connection reset after a timeout"))
            raise

    async def ping(self, budget: float | None = None) -> bool:
        """True if a PING on a (fresh if needed) connection is answered within ``budget``."""
        try:
            async with asyncio.timeout(budget or self.timeout):
                conn = await self._connection(self._next, force=True)
                reply = await conn.request(b"*1\r\n$4\r\nPING\r\n")
        except (TimeoutError, OSError):
            return False
        return bool(reply == b"PONG")

    async def _connection(self, index: int, *, force: bool) -> _Connection:
        conn = self._conns[index]
        if conn is not None and conn.open:
            return conn
        pending = self._connecting[index]
        if pending is None:
            if self._closed:
                raise RespConnectionError("redis client closed")
            if not force and time.monotonic() < self._retry_at:
                # Name the last failure: "wrong password" and "no route" need different fixes.
                raise RespConnectionError(
                    f"redis unreachable (reconnect backing off; last error: {self._last_error})"
                )
            # Shared by every caller that needs this slot while it connects.
            pending = asyncio.ensure_future(self._connect())
            self._connecting[index] = pending
            pending.add_done_callback(lambda f: self._connected(index, f))
        return await asyncio.shield(pending)

    def _connected(self, index: int, future: asyncio.Future[_Connection]) -> None:
        self._connecting[index] = None
        if future.cancelled() or future.exception() is not None:
            exc = None if future.cancelled() else future.exception()
            self._last_error = "cancelled" if exc is None else str(exc) or type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            return
        self._backoff = _BACKOFF_MIN
        self._retry_at = 0.0
        self._conns[index] = future.result()
        if self._closed:
            future.result().close()

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self.timeout):
            # Bounded on its own: callers wait through a shield, and a server that accepts but
            # never answers the handshake must not leave the slot connecting for ever.
            return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            if s.path is not None:
                _, conn = await loop.create_unix_connection(lambda: _Connection(loop), s.path)
            else:
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), s.host, s.port, ssl=s.ssl,
                    server_hostname=s.server_hostname,
                )
        except OSError as exc:
            raise RespConnectionError(f"cannot connect to redis: {exc}") from exc
        try:
            for reply in await asyncio.gather(*(conn.request(c) for c in s.handshake())):
                if isinstance(reply, ReplyError):
                    raise RespConnectionError(f"redis refused the connection setup: {reply}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close every connection (pending callers fail with a connection error)."""
        self._closed = True
        for pending in self._connecting:
            if pending is not None:
                pending.cancel()
        for conn in self._conns:
            if conn is not None:
                conn.close(RespConnectionError("redis client closed"))
        self._conns = [None] * len(self._conns)
