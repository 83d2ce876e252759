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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ratelimit.backends.base import Backend, CounterOp
from ratelimit.config import Algorithm, DescriptorNode, Domain, Limit, RateLimitConfig
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
# Bound of the per-descriptor plan cache (cleared whole when full).
_PLAN_CACHE = 20_000


class Code(enum.IntEnum):
    """Status codes, numbered like the RLS proto's ``RateLimitResponse.Code``."""

    OK = 1
    OVER_LIMIT = 2


# Per-request values are NamedTuples: immutable like the config's frozen dataclasses, at well
# under half the construction cost (0.6 vs 1.6 µs each, measured), and a call builds a dozen.


class Descriptor(NamedTuple):
    """One request descriptor: ordered (key, value) entries, optional addend and override."""

    entries: tuple[tuple[str, str], ...]
    hits_addend: int | None = None
    override: Limit | None = None


class Request(NamedTuple):
    """A ShouldRateLimit request in domain terms."""

    domain: str
    descriptors: tuple[Descriptor, ...]
    hits_addend: int = 0


class Status(NamedTuple):
    """The answer for one descriptor (``limit`` None: no limit applies)."""

    code: Code
    limit: Limit | None = None
    remaining: int = 0
    reset_seconds: int | None = None


class StatDelta(NamedTuple):
    """Counter increments for one matched descriptor, keyed by domain and metric key path."""

    domain: str
    key: str
    total_hits: int = 0
    over_limit: int = 0
    near_limit: int = 0
    within_limit: int = 0
    shadow_mode: int = 0
    over_limit_with_local_cache: int = 0


class Decision(NamedTuple):
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


# Enum members bound once: ``Code.OK`` is a class attribute lookup through the enum metaclass,
# measurably slow in a loop that runs per descriptor.
_OK = Code.OK
_OVER = Code.OVER_LIMIT
_SLIDING = Algorithm.SLIDING_WINDOW
_FIXED = Algorithm.FIXED_WINDOW

_NO_LIMIT = Status(Code.OK)
_UNLIMITED = Status(Code.OK, None, MAX_REMAINING)

# One (descriptor, limit) pair being decided: limit, addend, counter key, window end (Unix s),
# index of its op in the batch (-1: answered from the local over-limit cache).
_Slot = tuple[Limit, int, str, int, int]
# A matched request descriptor: node (None for an override or no match), limits to apply,
# counter-key base ``<domain>_<k>_<v>_...`` and metric key path.
_Plan = tuple["DescriptorNode | None", tuple[Limit, ...], str, str]


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
        self._ratio = self.settings.near_limit_ratio
        # key of a fixed window already over its limit -> end of that window (Unix seconds).
        self._over_cache: dict[str, int] = {}
        # Request descriptors repeat (same client, same route): their lookup result, counter-key
        # base and stats key are kept per (domain, entries) for the current config only.
        self._plans: dict[tuple[str, tuple[tuple[str, str], ...]], _Plan] = {}
        self._plans_for: RateLimitConfig | None = None

    async def decide(self, config: RateLimitConfig, request: Request) -> Decision:
        """Evaluate ``request``; raises InvalidRequestError or BackendError."""
        domain_name, descriptors, request_addend = request
        if not domain_name:
            raise InvalidRequestError("rate limit domain must not be empty")
        if not descriptors:
            raise InvalidRequestError("rate limit descriptor list must not be empty")
        domain = config.by_domain.get(domain_name)
        if domain is None:
            return Decision(_OK, (_NO_LIMIT,) * len(descriptors), (), (), False)

        now = self._clock()
        inow = int(now)
        default_addend = request_addend or 1
        matched: list[_Plan] = []
        replaced: set[str] | None = None
        if config is not self._plans_for:
            self._plans.clear()
            self._plans_for = config
        cached_plans = self._plans
        for entries, _, override in descriptors:
            if override is not None:
                # Envoy's per-request override replaces whatever the config says.
                matched.append((None, (override,), _cache_key(domain_name, entries, None),
                                _stats_key(None, entries)))
                continue
            plan = cached_plans.get((domain_name, entries))
            if plan is None:
                plan = self._plan(domain, entries)
            matched.append(plan)
            node = plan[0]
            if node is not None and node.replaces:
                replaced = (replaced or set()) | node.replaces

        # Build every counter op first so the backend sees one batch (one Redis round trip).
        ops: list[CounterOp] = []
        plans: list[list[_Slot]] = []
        cache = self._over_cache if self.settings.local_cache else None
        for desc, (_node, limits, base, _) in zip(descriptors, matched, strict=True):
            row: list[_Slot] = []
            plans.append(row)
            if not limits or limits[0].unlimited:
                continue
            addend = desc.hits_addend
            if addend is None:
                addend = default_addend
            several = len(limits) > 1
            for lim in limits:
                if replaced is not None and lim.name and lim.name in replaced:
                    continue
                seconds = lim.seconds
                start = inow - inow % seconds
                prefix = f"{base}{lim.unit}_" if several else base
                if lim.algorithm is _SLIDING:
                    # The braces are a Redis Cluster hash tag: both windows share one slot.
                    key = f"{{{prefix}}}sw_{start}"
                    row.append((lim, addend, key, start + seconds, len(ops)))
                    ops.append(CounterOp(
                        key, addend, 2 * seconds, f"{{{prefix}}}sw_{start - seconds}",
                        max(0.0, (start + seconds - now) / seconds), lim.requests_per_unit,
                    ))
                    continue
                key = f"{prefix}{start}"
                if cache is not None:
                    until = cache.get(key)
                    if until is not None and until > now:
                        row.append((lim, addend, key, start + seconds, -1))
                        continue
                row.append((lim, addend, key, start + seconds, len(ops)))
                ops.append(CounterOp(key, addend, seconds))

        results = await self.backend.apply(ops) if ops else []

        statuses: list[Status] = []
        stats: list[StatDelta] = []
        quota_total = quota_over = 0
        over_any = False
        for desc, (node, limits, _, stats_key), row in zip(descriptors, matched, plans,
                                                            strict=True):
            if not row:
                if limits and limits[0].unlimited:
                    # Unlimited: OK without touching the backend, but still counted.
                    statuses.append(_UNLIMITED)
                    addend = desc.hits_addend
                    if addend is None:
                        addend = default_addend
                    stats.append(StatDelta(domain_name, stats_key, addend, 0, 0, addend))
                else:
                    # No match, a whitelist node, or every limit replaced: no limit, no stats.
                    statuses.append(_NO_LIMIT)
                continue
            addend = row[0][1]
            if len(row) == 1:
                chosen, over, near = self._evaluate(row[0], results, now, cache)
            else:
                chosen, over, near = self._evaluate(row[0], results, now, cache)
                for slot in row[1:]:
                    status, d_over, d_near = self._evaluate(slot, results, now, cache)
                    over, near = max(over, d_over), max(near, d_near)
                    if _tighter(status, chosen):
                        chosen = status
            cached = 0
            for slot in row:
                if slot[4] < 0:
                    cached = addend
            shadow = 0
            if chosen.code is _OVER:
                if node is not None and node.shadow_mode:
                    shadow = addend
                    chosen = Status(_OK, chosen.limit, 0, chosen.reset_seconds)
                elif node is None or not node.quota_mode:
                    over_any = True
                within = 0
            else:
                within = addend
            stats.append(StatDelta(domain_name, stats_key, addend, over, near,
                                   within, shadow, cached))
            statuses.append(chosen)
            if node is not None and node.quota_mode:
                quota_total += 1
                quota_over += chosen.code is _OVER

        # Quota descriptors (reference quota_mode) fail the request only when all of them are over.
        if quota_total and quota_over == quota_total:
            over_any = True
        global_shadow = False
        if over_any and self.settings.shadow_mode:
            over_any, global_shadow = False, True
        return Decision(
            _OVER if over_any else _OK,
            tuple(statuses),
            self._headers(statuses) if self.settings.response_headers else (),
            tuple(stats),
            True,
            global_shadow,
        )

    def _plan(self, domain: Domain, entries: tuple[tuple[str, str], ...]) -> _Plan:
        """Match ``entries`` once and remember the node, counter-key base and stats key."""
        node = domain.find(entries)
        if node is None or not node.limits:
            plan: _Plan = (node, (), "", "")
        else:
            plan = (node, node.limits, _cache_key(domain.name, entries, node),
                    _stats_key(node, entries))
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[(domain.name, entries)] = plan
        return plan

    def _evaluate(
        self, slot: _Slot, results: Sequence[int], now: float, cache: dict[str, int] | None
    ) -> tuple[Status, int, int]:
        """Status plus (over_limit, near_limit) increments for one limit."""
        lim, addend, key, window_end, index = slot
        # Whole seconds, as the reference computes it: unit - now % unit (always >= 1).
        reset = window_end - int(now)
        if index < 0:
            return Status(_OVER, lim, 0, reset), addend, 0
        after = results[index]
        before = after - addend
        limit = lim.requests_per_unit
        near_threshold = int(limit * self._ratio)  # floor: both operands are >= 0
        if after > limit:
            if before >= limit:
                over, near = addend, 0
            else:
                # The addend straddles the limit: the part below it was near-limit traffic.
                over = after - limit
                near = limit - max(near_threshold, before)
            if cache is not None and lim.algorithm is _FIXED:
                cache[key] = window_end
                if len(cache) > _CACHE_SWEEP:
                    self._sweep_cache(now)
            return Status(_OVER, lim, 0, reset), over, near
        near = 0
        if after > near_threshold:
            near = addend if before >= near_threshold else after - near_threshold
        return Status(_OK, lim, limit - after, reset), 0, near

    def _sweep_cache(self, now: float) -> None:
        for key in [k for k, until in self._over_cache.items() if until <= now]:
            del self._over_cache[key]
        if len(self._over_cache) > _CACHE_SWEEP // 2:
            # Mostly live keys: start over rather than sweep again on every insert (the cache
            # only saves backend calls; an evicted key is simply asked again).
            self._over_cache.clear()

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


def _cache_key(
    domain: str, entries: tuple[tuple[str, str], ...], node: DescriptorNode | None
) -> str:
    """``<domain>_<k1>_<v1>_<k2>_<v2>_`` (share_threshold levels use the wildcard pattern)."""
    if node is not None and node.shares:
        parts = [
            f"{k}_{pattern if pattern is not None else v}_"
            for (k, v), pattern in zip(entries, node.share_patterns, strict=False)
        ]
        return f"{domain}_{''.join(parts)}"
    if len(entries) == 1:
        k, v = entries[0]
        return f"{domain}_{k}_{v}_"
    return f"{domain}_{''.join([f'{k}_{v}_' for k, v in entries])}"


def _stats_key(node: DescriptorNode | None, entries: tuple[tuple[str, str], ...]) -> str:
    """Metric key path: as written in the config, or with runtime values where asked."""
    if node is None:
        # An override: keys only, so per-request values never become label values.
        return ".".join(k for k, _ in entries)
    if not node.runtime_stats:
        return node.stats_key
    if node.detailed_metric:
        return ".".join(f"{k}_{v}" for k, v in entries)
    return ".".join(
        f"{k}_{v}" if runtime else static
        for (k, v), static, runtime in zip(
            entries, node.stats_parts, node.value_to_metric_levels, strict=False
        )
    )
