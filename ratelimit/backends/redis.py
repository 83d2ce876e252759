"""Redis backend: one Lua script call per ShouldRateLimit, atomic per counter, bounded latency.

Every op of a request goes into ONE ``EVALSHA`` (the script is loaded on first use and
reloaded if Redis forgets it), so a request costs one round trip whatever the number of
descriptors, and each counter's increment and expiry happen atomically inside the script (no
window where a key exists without a TTL, unlike a plain INCRBY+EXPIRE pipeline).

Keys are namespaced with a prefix (default ``mixer:rl:``) and always expire: a fixed-window key
after its window, a sliding-window key after two windows (it serves as the "previous window" of
the next one). Sliding-window keys carry a hash tag (``{...}``) so the current and previous
window always live in one Redis Cluster slot.

Modes (``mode``):

- ``single``: ``redis://[user:password@]host:port/db``; ``rediss://`` for TLS.
- ``sentinel``: ``redis://[user:password@]host1:port1,host2:port2/<master-name>[/db]``: the hosts
  are Sentinels, the path names the monitored master; ``rediss://`` for TLS to the master.
- ``cluster``: ``redis://[user:password@]host:port`` of any node (``rediss://`` for TLS). A Lua
  script may only touch keys of one slot, so ops are grouped by slot and the groups run
  concurrently: one round trip per slot touched (usually one per descriptor).

Every call is bounded by ``timeout`` seconds (connection, pool wait and reply together); a
timeout or connection failure raises ``BackendError`` and the next call reconnects by itself.
A call that timed out may still have been applied (its command was already sent).

Batching: at most ``pool_size`` script calls (one per connection) are in flight; calls
arriving meanwhile (and calls made in the same event-loop turn) wait and go together in the
next script call. Unloaded, a call is sent at once; under load, batches grow by themselves, so
the per-call client CPU (the Redis client is most of this backend's cost) is shared by many
requests. Each op stays atomic, and each request still costs at most one round trip of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratelimit.backends.base import CounterOp
from ratelimit.backends.resp import ReplyError, RespClient, RespConnectionError, pack
from ratelimit.backends.url import parse_redis_url, redact
from ratelimit.errors import BackendError, RedisUrlError

MODES = ("single", "sentinel", "cluster")

# One request's ops and the future its caller awaits.
_Waiter = tuple[Sequence[CounterOp], "asyncio.Future[list[int]]"]

# Most requests per script call (script calls in flight at once: ``pool_size``).
_MAX_BATCH = 256

# ARGV holds 4 values per op: addend, ttl, weight (-1 = fixed window), limit.
# KEYS holds 1 key per fixed op and 2 (current, previous window) per sliding op.
_SCRIPT = """
local out = {}
local k = 1
for i = 1, #ARGV, 4 do
  local addend = tonumber(ARGV[i])
  local ttl = tonumber(ARGV[i + 1])
  local weight = tonumber(ARGV[i + 2])
  if weight < 0 then
    local v = redis.call('INCRBY', KEYS[k], addend)
    redis.call('EXPIRE', KEYS[k], ttl)
    out[#out + 1] = v
    k = k + 1
  else
    local limit = tonumber(ARGV[i + 3])
    local cur = tonumber(redis.call('GET', KEYS[k]) or '0')
    local prev = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    local est = math.floor(prev * weight) + cur
    if addend > 0 and est + addend <= limit then
      redis.call('INCRBY', KEYS[k], addend)
      redis.call('EXPIRE', KEYS[k], ttl)
    end
    out[#out + 1] = est + addend
    k = k + 2
  end
end
return out
"""
_SCRIPT_BYTES = _SCRIPT.encode()


class RedisBackend:
    """Counters in Redis (single node, Sentinel or Cluster)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        mode: str = "single",
        timeout: float = 0.25,
        pool_size: int = 4,
        prefix: str = "mixer:rl:",
        expiration_jitter: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown redis mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.timeout = timeout
        self.prefix = prefix
        # EXPIRATION_JITTER_MAX_SECONDS: each fixed-window expiry gets 0..jitter-1 extra seconds,
        # so keys written in one burst do not all expire in the same instant (the reference's).
        self.expiration_jitter = max(0, expiration_jitter)
        self._rng = rng or random.Random()
        self._healthy = True
        self._pending: list[_Waiter] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._max_inflight = max(1, pool_size)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()
        # Single node: our own lean pipelined client (ratelimit/backends/resp.py): redis-py's
        # asyncio client cost more CPU per script call than the rest of a ShouldRateLimit.
        # Cluster and Sentinel keep redis-py, which routes to slots and follows failovers.
        self._resp: RespClient | None = None
        self._client: Any = None
        if mode == "single":
            self._resp = RespClient(url, timeout=timeout, pool_size=pool_size)
        else:
            self._client = _client(url, mode, timeout, pool_size)
            self._script = self._client.register_script(_SCRIPT)
        self.url = redact(url)

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        """Apply ``ops`` (batched with concurrent calls), within ``timeout``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._pending.append((ops, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        try:
            async with asyncio.timeout(self.timeout):
                return await future
        except TimeoutError as exc:
            self._healthy = False
            raise BackendError(f"redis did not answer within {self.timeout}s", "timeout") from exc

    def _flush(self) -> None:
        self._flush_scheduled = False
        if any(future.done() for _, future in self._pending):
            # Callers that already gave up (timed out while queued behind a slow Redis) must
            # not be counted after they were answered UNAVAILABLE.
            self._pending = [w for w in self._pending if not w[1].done()]
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[:_MAX_BATCH]
            del self._pending[:_MAX_BATCH]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            # Keep a reference until done (the loop only holds weak ones).
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        # Whatever queued up while this call was in flight goes next.
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _send(self, batch: list[_Waiter]) -> None:
        ops = [op for request_ops, _ in batch for op in request_ops]
        try:
            if self._resp is not None:
                results = await self._run(ops, self._resp)  # bounded by the client itself
            else:
                async with asyncio.timeout(self.timeout):
                    if self.mode == "cluster":
                        results = await self._apply_cluster(ops)
                    else:
                        results = await self._run_client(ops)
        except BaseException as exc:  # every waiter must hear about the failure
            if _backend_error(exc, self.timeout).kind in ("timeout", "connection"):
                self._healthy = False
            for _, future in batch:
                if not future.done():
                    future.set_exception(_backend_error(exc, self.timeout))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._healthy = True
        pos = 0
        for request_ops, future in batch:
            end = pos + len(request_ops)
            if not future.done():
                future.set_result(results[pos:end])
            pos = end

    def _ttl(self, op: CounterOp) -> int:
        """The expiry of a fixed-window op, with the configured jitter."""
        if self.expiration_jitter:
            return op.ttl + self._rng.randrange(self.expiration_jitter)
        return op.ttl

    async def _run(self, ops: Sequence[CounterOp], client: RespClient) -> list[int]:
        prefix = self.prefix
        keys: list[bytes] = []
        args: list[bytes] = []
        for op in ops:
            keys.append((prefix + op.key).encode())
            if op.prev_key is None:
                args.append(b"%d" % op.addend)
                args.append(b"%d" % self._ttl(op))
                args.append(b"-1")
                args.append(b"0")
            else:
                keys.append((prefix + op.prev_key).encode())
                args.append(b"%d" % op.addend)
                args.append(b"%d" % op.ttl)
                args.append(repr(op.prev_weight).encode())
                args.append(b"%d" % op.limit)
        numkeys = b"%d" % len(keys)
        values = await client.call(pack([b"EVALSHA", self._sha, numkeys, *keys, *args]))
        if isinstance(values, ReplyError) and str(values).startswith("NOSCRIPT"):
            # First use on this server (or after SCRIPT FLUSH / a restart): EVAL runs the
            # script and caches it, so the next calls' EVALSHA finds it.
            values = await client.call(pack([b"EVAL", _SCRIPT_BYTES, numkeys, *keys, *args]))
        if isinstance(values, ReplyError):
            raise values
        return [int(v) for v in values]

    async def _run_client(self, ops: Sequence[CounterOp]) -> list[int]:
        keys: list[str] = []
        args: list[str | int] = []
        prefix = self.prefix
        for op in ops:
            keys.append(prefix + op.key)
            if op.prev_key is None:
                args += (op.addend, self._ttl(op), -1, 0)
            else:
                keys.append(prefix + op.prev_key)
                args += (op.addend, op.ttl, repr(op.prev_weight), op.limit)
        values = await self._script(keys=keys, args=args)
        return [int(v) for v in values]

    async def _apply_cluster(self, ops: Sequence[CounterOp]) -> list[int]:
        groups: dict[int, list[int]] = {}
        for index, op in enumerate(ops):
            groups.setdefault(key_slot((self.prefix + op.key).encode()), []).append(index)
        parts = await asyncio.gather(
            *(self._run_client([ops[i] for i in indexes]) for indexes in groups.values())
        )
        out = [0] * len(ops)
        for indexes, values in zip(groups.values(), parts, strict=True):
            for i, value in zip(indexes, values, strict=True):
                out[i] = value
        return out

    async def ping(self, budget: float | None = None) -> bool:
        """True if Redis answers a PING within ``budget`` seconds (default: the call timeout).

        The first PING also sets the client up (Cluster: reads the slot map; Sentinel: finds
        the master), so the service sends one at startup with a longer budget.
        """
        if self._resp is not None:
            self._healthy = await self._resp.ping(budget)
            return self._healthy
        try:
            async with asyncio.timeout(budget or self.timeout):
                await self._client.ping()
        except (TimeoutError, RedisError, OSError):
            self._healthy = False
            return False
        self._healthy = True
        return True

    def healthy(self) -> bool:
        """False after a failed call, until a call succeeds again."""
        return self._healthy

    async def close(self) -> None:
        """Close the client and its connection pool."""
        for task in list(self._tasks):
            task.cancel()
        if self._resp is not None:
            await self._resp.close()
        else:
            await self._client.aclose()


def _backend_error(exc: BaseException, timeout: float) -> BackendError:
    """The BackendError (with a stable ``kind``) for a failure of one script call."""
    if isinstance(exc, (TimeoutError, RedisTimeoutError)):
        return BackendError(f"redis did not answer within {timeout}s", "timeout")
    if isinstance(exc, (RedisConnectionError, RespConnectionError)):
        return BackendError(f"redis connection failed: {exc}", "connection")
    if isinstance(exc, asyncio.CancelledError):
        return BackendError("redis call cancelled (shutting down)", "connection")
    return BackendError(f"redis error: {exc}", "response")


def _client(url: str, mode: str, timeout: float, pool_size: int) -> Any:
    """The redis-py client for ``cluster`` or ``sentinel`` mode (single uses ``resp``)."""
    parsed = parse_redis_url(url, mode=mode)
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
    }
    auth: dict[str, Any] = {}
    if parsed.password is not None:
        auth["password"] = parsed.password
    if parsed.username:
        auth["username"] = parsed.username
    tls = parsed.tls.redis_py_options() if parsed.tls is not None else {}
    if mode == "cluster":
        if parsed.db:
            raise RedisUrlError(f"redis URL {parsed.redacted}: Redis Cluster has only db 0")
        # One script call per slot group runs concurrently, and redis-py's cluster client fails
        # (rather than waits) when a node's connections run out: allow plenty per node.
        return aredis.RedisCluster(
            host=parsed.host, port=parsed.port, max_connections=max(256, pool_size),
            **common, **auth, **tls,
        )
    # Sentinel: the Sentinels are spoken to in plain text; the master over TLS for rediss://,
    # with the URL's TLS options.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.hosts), sentinel_kwargs={**common, **auth}, **common, **auth, **tls,
    )
    return sentinel.master_for(parsed.master or "", db=parsed.db)  # sentinel mode: always set
