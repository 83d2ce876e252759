"""Rate limit decisions: request descriptors -> matched limits -> counter ops -> statuses.

Pure logic over a ``Backend`` and an injected clock (Unix seconds). It behaves like
envoyproxy/ratelimit: the limit at a request descriptor's last entry applies; windows are
epoch-aligned (``floor(now / unit) * unit``); the per-descriptor ``hits_addend`` wins (0 = check
only), else the request's (0 counts as 1); OVER_LIMIT iff the counter after the increment exceeds
``requests_per_unit``; ``replaces`` drops the named limits without counting them; rule shadow mode
turns that status into OK, global shadow mode turns the overall code into OK. The statistics of
each decision are returned as data (``StatDelta``) so the caller records them.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ratelimit.backends.base import Backend, CounterOp
from ratelimit.config import Algorithm, DescriptorNode, Limit, RateLimitConfig
from ratelimit.errors import InvalidRequestError

__all__ = [
    "MAX_REMAINING",
    "Code",
    "Decision",
    "Descriptor",
    "Limiter",
    "LimiterSettings",
    "Request",
    "StatDelta",
    "Status",
]

#: ``limit_remaining`` of an unlimited descriptor (uint32 max, as the reference answers).
MAX_REMAINING = 0xFFFFFFFF

# Local over-limit cache entries are swept when the table passes this size.
_CACHE_SWEEP = 50_000


class Code(enum.IntEnum):
    """Status codes, numbered like the RLS proto's ``RateLimitResponse.Code``."""

    OK = 1
    OVER_LIMIT = 2


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One request descriptor: ordered (key, value) entries, optional addend and override."""

    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None = None
    override: Limit | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A ShouldRateLimit request in domain terms."""

    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """The answer for one descriptor (``limit`` None: no limit applies)."""

    code: Code
    limit: Limit | None = None
    remaining: int = 0
    reset_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class StatDelta:
    """Counter increments for one matched descriptor, keyed by domain and metric key path."""

    domain: str
    key: str
    total_hits: int = 0
    over_limit: int = 0
    near_limit: int = 0
    within_limit: int = 0
    shadow_mode: int = 0
    over_limit_with_local_cache: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """The overall answer, per-descriptor statuses in request order, headers and stats."""

    overall: Code
    statuses: tuple[Status, ...]
    headers: tuple[tuple[str, str], ...] = ()
    stats: tuple[StatDelta, ...] = ()
    domain_found: bool = True
    global_shadow: bool = False


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """Process-wide behaviour switches (CLI flags with env fallbacks)."""

    shadow_mode: bool = False
    near_limit_ratio: float = 0.8
    local_cache: bool = True
    response_headers: bool = False
    limit_header: str = "RateLimit-Limit"
    remaining_header: str = "RateLimit-Remaining"
    reset_header: str = "RateLimit-Reset"


_NO_LIMIT = Status(Code.OK)


@dataclass(slots=True)
class _Slot:
    """Working state of one (descriptor, limit) pair during a decision."""

    limit: Limit
    addend: int
    key: str
    window_end: float
    op_index: int = -1
    cached_over: bool = False


class Limiter:
    """Decides ShouldRateLimit requests against a config and a backend."""

    def __init__(
        self,
        backend: Backend,
        settings: LimiterSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.settings = settings or LimiterSettings()
        self._clock = clock
        # key of a fixed window already over its limit -> end of that window (Unix seconds).
        self._over_cache: dict[str, float] = {}

    async def decide(self, config: RateLimitConfig, request: Request) -> Decision:
        """Evaluate ``request``; raises InvalidRequestError or BackendError."""
        if not request.domain:
            raise InvalidRequestError("rate limit domain must not be empty")
        if not request.descriptors:
            raise InvalidRequestError("rate limit descriptor list must not be empty")
        domain = config.domain(request.domain)
        if domain is None:
            return Decision(
                overall=Code.OK,
                statuses=tuple(_NO_LIMIT for _ in request.descriptors),
                domain_found=False,
            )

        now = self._clock()
        default_addend = request.hits_addend or 1
        matched: list[tuple[DescriptorNode | None, tuple[Limit, ...]]] = []
        replaced: set[str] = set()
        for desc in request.descriptors:
            if desc.override is not None:
                # Envoy's per-request override replaces whatever the config says.
                matched.append((None, (desc.override,)))
                continue
            node = domain.find(desc.entries)
            if node is None:
                matched.append((None, ()))
                continue
            matched.append((node, node.limits))
            for lim in node.limits:
                replaced.update(lim.replaces)

        # Build every counter op first so the backend sees one batch (one Redis round trip).
        ops: list[CounterOp] = []
        slots: list[list[_Slot]] = []
        cache = self._over_cache if self.settings.local_cache else None
        for desc, (node, limits) in zip(request.descriptors, matched, strict=True):
            addend = desc.hits_addend if desc.hits_addend is not None else default_addend
            row: list[_Slot] = []
            for lim in limits:
                if lim.unlimited or (replaced and lim.name and lim.name in replaced):
                    continue
                row.append(self._slot(request.domain, desc, node, lim, len(limits), addend, now,
                                      ops, cache))
            slots.append(row)

        results = await self.backend.apply(ops) if ops else []

        ratio = self.settings.near_limit_ratio
        statuses: list[Status] = []
        stats: list[StatDelta] = []
        quota_total = quota_over = 0
        over_any = False
        for desc, (node, limits), row in zip(request.descriptors, matched, slots, strict=True):
            if not row:
                if limits and limits[0].unlimited:
                    # Unlimited: OK without touching the backend, but still counted.
                    statuses.append(Status(Code.OK, remaining=MAX_REMAINING))
                    addend = desc.hits_addend if desc.hits_addend is not None else default_addend
                    stats.append(StatDelta(request.domain, _stats_key(node, desc),
                                           total_hits=addend, within_limit=addend))
                else:
                    # No match, a whitelist node, or every limit replaced: no limit, no stats.
                    statuses.append(_NO_LIMIT)
                continue
            addend = desc.hits_addend if desc.hits_addend is not None else default_addend
            key = _stats_key(node, desc)
            chosen: Status | None = None
            over = near = cached = 0
            for slot in row:
                status, d_over, d_near = self._evaluate(slot, results, ratio, now, cache)
                over, near = max(over, d_over), max(near, d_near)
                if slot.cached_over:
                    cached = max(cached, slot.addend)
                if chosen is None or _tighter(status, chosen):
                    chosen = status
            assert chosen is not None
            shadow = 0
            if chosen.code is Code.OVER_LIMIT and node is not None and node.shadow_mode:
                shadow = addend
                chosen = Status(Code.OK, chosen.limit, 0, chosen.reset_seconds)
            within = addend if chosen.code is Code.OK and not shadow else 0
            stats.append(StatDelta(
                request.domain, key, total_hits=addend, over_limit=over, near_limit=near,
                within_limit=within, shadow_mode=shadow, over_limit_with_local_cache=cached,
            ))
            statuses.append(chosen)
            is_quota = node is not None and node.quota_mode
            if is_quota:
                quota_total += 1
                quota_over += chosen.code is Code.OVER_LIMIT
            elif chosen.code is Code.OVER_LIMIT:
                over_any = True

        # Quota descriptors (reference quota_mode) fail the request only when all of them are over.
        if quota_total and quota_over == quota_total:
            over_any = True
        overall = Code.OVER_LIMIT if over_any else Code.OK
        global_shadow = False
        if overall is Code.OVER_LIMIT and self.settings.shadow_mode:
            overall, global_shadow = Code.OK, True
        headers = self._headers(statuses) if self.settings.response_headers else ()
        return Decision(
            overall=overall, statuses=tuple(statuses), headers=headers, stats=tuple(stats),
            global_shadow=global_shadow,
        )

    def _slot(
        self,
        domain: str,
        desc: Descriptor,
        node: DescriptorNode | None,
        lim: Limit,
        n_limits: int,
        addend: int,
        now: float,
        ops: list[CounterOp],
        cache: dict[str, float] | None,
    ) -> _Slot:
        seconds = lim.seconds
        start = (int(now) // seconds) * seconds
        base = _cache_key(domain, desc, node)
        if n_limits > 1:
            base += f"{lim.unit}_"
        if lim.algorithm is Algorithm.SLIDING_WINDOW:
            # The braces are a Redis Cluster hash tag: both windows land in one slot.
            key = f"{{{base}}}sw_{start}"
            slot = _Slot(lim, addend, key, start + seconds, op_index=len(ops))
            ops.append(CounterOp(
                key=key, addend=addend, ttl=2 * seconds,
                prev_key=f"{{{base}}}sw_{start - seconds}",
                prev_weight=max(0.0, (start + seconds - now) / seconds),
                limit=lim.requests_per_unit,
            ))
            return slot
        key = f"{base}{start}"
        slot = _Slot(lim, addend, key, start + seconds)
        if cache is not None:
            until = cache.get(key)
            if until is not None and until > now:
                slot.cached_over = True
                return slot
        slot.op_index = len(ops)
        ops.append(CounterOp(key=key, addend=addend, ttl=seconds))
        return slot

    def _evaluate(
        self,
        slot: _Slot,
        results: Sequence[int],
        ratio: float,
        now: float,
        cache: dict[str, float] | None,
    ) -> tuple[Status, int, int]:
        """Status plus (over_limit, near_limit) increments for one limit."""
        lim, addend = slot.limit, slot.addend
        reset = max(1, math.ceil(slot.window_end - now))
        if slot.cached_over:
            return Status(Code.OVER_LIMIT, lim, 0, reset), addend, 0
        after = results[slot.op_index]
        before = after - addend
        limit = lim.requests_per_unit
        near_threshold = math.floor(limit * ratio)
        if after > limit:
            if before >= limit:
                over, near = addend, 0
            else:
                # The addend straddles the limit: the part below it was near-limit traffic.
                over = after - limit
                near = limit - max(near_threshold, before)
            if cache is not None and lim.algorithm is Algorithm.FIXED_WINDOW:
                cache[slot.key] = slot.window_end
                if len(cache) > _CACHE_SWEEP:
                    self._sweep_cache(now)
            return Status(Code.OVER_LIMIT, lim, 0, reset), over, near
        near = 0
        if after > near_threshold:
            near = addend if before >= near_threshold else after - near_threshold
        return Status(Code.OK, lim, limit - after, reset), 0, near

    def _sweep_cache(self, now: float) -> None:
        for key in [k for k, until in self._over_cache.items() if until <= now]:
            del self._over_cache[key]

    def _headers(self, statuses: Sequence[Status]) -> tuple[tuple[str, str], ...]:
        """RateLimit-* headers from the most constrained status (an OVER_LIMIT one wins)."""
        best: Status | None = None
        for status in statuses:
            if status.limit is None:
                continue
            if best is None or _tighter(status, best):
                best = status
        if best is None or best.limit is None:
            return ()
        s = self.settings
        return (
            (s.limit_header, str(best.limit.requests_per_unit)),
            (s.remaining_header, str(best.remaining)),
            (s.reset_header, str(best.reset_seconds or 0)),
        )


def _tighter(a: Status, b: Status) -> bool:
    """True if ``a`` should be reported instead of ``b``.

    Over beats OK; between two over-limit statuses the one blocking longer wins (that is when
    the client may retry); between OK ones the one with fewer requests left.
    """
    if a.code is not b.code:
        return a.code is Code.OVER_LIMIT
    if a.code is Code.OVER_LIMIT:
        return (a.reset_seconds or 0) > (b.reset_seconds or 0)
    return a.remaining < b.remaining


def _cache_key(domain: str, desc: Descriptor, node: DescriptorNode | None) -> str:
    """``<domain>_<k1>_<v1>_<k2>_<v2>_`` (share_threshold levels use the wildcard pattern)."""
    if node is not None and node.shares:
        parts = [
            f"{k}_{pattern if pattern is not None else v}_"
            for (k, v), pattern in zip(desc.entries, node.share_patterns, strict=False)
        ]
    else:
        parts = [f"{k}_{v}_" for k, v in desc.entries]
    return f"{domain}_{''.join(parts)}"


def _stats_key(node: DescriptorNode | None, desc: Descriptor) -> str:
    """Metric key path: as written in the config, or with runtime values where asked."""
    if node is None:
        # An override: keys only, so per-request values never become label values.
        return ".".join(k for k, _ in desc.entries)
    if not node.runtime_stats:
        return node.stats_key
    if node.detailed_metric:
        return ".".join(f"{k}_{v}" for k, v in desc.entries)
    return ".".join(
        f"{k}_{v}" if runtime else static
        for (k, v), static, runtime in zip(
            desc.entries, node.stats_parts, node.value_to_metric_levels, strict=False
        )
    )
