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
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ratelimit.backends.base import CounterOp
from ratelimit.errors import BackendError

MODES = ("single", "sentinel", "cluster")

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


class RedisBackend:
    """Counters in Redis (single node, Sentinel or Cluster)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        mode: str = "single",
        timeout: float = 0.25,
        pool_size: int = 32,
        prefix: str = "mixer:rl:",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown redis mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.timeout = timeout
        self.prefix = prefix
        self._healthy = True
        self._client: Any = _client(url, mode, timeout, pool_size)
        self._script = self._client.register_script(_SCRIPT)
        self.url = _redact(url)

    async def apply(self, ops: Sequence[CounterOp]) -> list[int]:
        """Run the ops in one script call (per slot in cluster mode), within ``timeout``."""
        try:
            async with asyncio.timeout(self.timeout):
                if self.mode == "cluster":
                    result = await self._apply_cluster(ops)
                else:
                    result = await self._run(ops)
        except (TimeoutError, RedisTimeoutError) as exc:
            self._healthy = False
            raise BackendError(f"redis did not answer within {self.timeout}s", "timeout") from exc
        except RedisConnectionError as exc:
            self._healthy = False
            raise BackendError(f"redis connection failed: {exc}", "connection") from exc
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis error: {exc}", "response") from exc
        self._healthy = True
        return result

    async def _run(self, ops: Sequence[CounterOp]) -> list[int]:
        keys: list[str] = []
        args: list[str | int] = []
        prefix = self.prefix
        for op in ops:
            keys.append(prefix + op.key)
            if op.prev_key is None:
                args += (op.addend, op.ttl, -1, 0)
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
            *(self._run([ops[i] for i in indexes]) for indexes in groups.values())
        )
        out = [0] * len(ops)
        for indexes, values in zip(groups.values(), parts, strict=True):
            for i, value in zip(indexes, values, strict=True):
                out[i] = value
        return out

    async def ping(self) -> bool:
        """True if Redis answers a PING within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
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
        await self._client.aclose()


def _client(url: str, mode: str, timeout: float, pool_size: int) -> Any:
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 0,
    }
    if mode == "cluster":
        return aredis.RedisCluster.from_url(url, max_connections=pool_size, **common)
    if mode == "sentinel":
        parts = urlsplit(url)
        hosts = []
        for item in parts.netloc.rpartition("@")[2].split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host or "127.0.0.1", int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("sentinel URL needs the master name as its path: redis://h:26379/mymaster")
        auth: dict[str, Any] = {}
        if parts.password is not None:
            auth["password"] = unquote(parts.password)
        if parts.username:
            auth["username"] = unquote(parts.username)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs={**common, **auth}, ssl=parts.scheme == "rediss", **common,
            **auth,
        )
        db = int(path[1]) if len(path) > 1 else 0
        return sentinel.master_for(path[0], db=db)
    # BlockingConnectionPool: callers wait (up to the timeout) for a free connection instead of
    # failing with "Too many connections" under bursts.
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=timeout, **common
    )
    return aredis.Redis(connection_pool=pool)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
