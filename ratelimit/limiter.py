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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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

# Bound of the per-descriptor plan cache (cleared whole when full).
_PLAN_CACHE = 20_000
# Bound of the compiled-request cache (cleared whole when full).
_REQUEST_CACHE = 10_000


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
    """The overall answer, per-descriptor statuses in request order, headers and stats.

    ``metadata`` is the response's dynamic metadata as plain JSON-able data (only with
    ``LimiterSettings.response_dynamic_metadata``), shaped as envoyproxy/ratelimit's.
    """

    overall: Code
    statuses: tuple[Status, ...]
    headers: tuple[tuple[str, str], ...] = ()
    stats: tuple[StatDelta, ...] = ()
    domain_found: bool = True
    global_shadow: bool = False
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """Process-wide behaviour switches (CLI flags with env fallbacks).

    Every default is envoyproxy/ratelimit's: ``local_cache`` off (its LOCAL_CACHE_SIZE_IN_BYTES
    is 0), ``quota_mode`` is its global QUOTA_MODE (every descriptor counts as a quota one),
    ``stop_increment_when_over_limit`` its STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT,
    ``response_dynamic_metadata`` its RESPONSE_DYNAMIC_METADATA.
    """

    shadow_mode: bool = False
    near_limit_ratio: float = 0.8
    local_cache: bool = False
    #: Most keys the local over-limit cache holds (the reference bounds it in bytes).
    local_cache_entries: int = 50_000
    response_headers: bool = False
    limit_header: str = "RateLimit-Limit"
    remaining_header: str = "RateLimit-Remaining"
    reset_header: str = "RateLimit-Reset"
    quota_mode: bool = False
    stop_increment_when_over_limit: bool = False
    response_dynamic_metadata: bool = False


# Enum members bound once: ``Code.OK`` is a class attribute lookup through the enum metaclass,
# measurably slow in a loop that runs per descriptor.
_OK = Code.OK
_OVER = Code.OVER_LIMIT
_SLIDING = Algorithm.SLIDING_WINDOW
_FIXED = Algorithm.FIXED_WINDOW

_NO_LIMIT = Status(Code.OK)
_UNLIMITED = Status(Code.OK, None, MAX_REMAINING)

# Kinds of a compiled request descriptor.
_NO_LIMIT_KIND, _UNLIMITED_KIND, _COUNTED = 0, 1, 2
# One window of a counter slot: (start, key, end, fixed: its CounterOp / sliding: previous key).
_Window = tuple[int, str, int, Any]


class _CounterSlot:
    """One (request descriptor, limit) pair of a compiled request, with its current window.

    The window's key and op are rebuilt only when the window moves (string formatting and op
    construction were a third of the limiter's time); ``window`` is replaced whole, never
    mutated, so a call holding the previous one across an await still sees consistent values.
    """

    __slots__ = ("addend", "lim", "limit", "near_threshold", "prefix", "seconds", "sliding",
                 "window")

    def __init__(self, lim: Limit, addend: int, prefix: str, ratio: float) -> None:
        self.lim = lim
        self.addend = addend
        self.prefix = prefix
        self.seconds = lim.seconds
        self.limit = lim.requests_per_unit
        self.near_threshold = int(lim.requests_per_unit * ratio)  # floor: both are >= 0
        self.sliding = lim.algorithm is _SLIDING
        self.window: _Window = (-1, "", 0, None)

    def rewindow(self, start: int) -> _Window:
        """Set and return the window starting at ``start``."""
        end = start + self.seconds
        if self.sliding:
            # The braces are a Redis Cluster hash tag: both windows share one slot.
            key = f"{{{self.prefix}}}sw_{start}"
            window: _Window = (start, key, end, f"{{{self.prefix}}}sw_{start - self.seconds}")
        else:
            key = f"{self.prefix}{start}"
            window = (start, key, end, CounterOp(key, self.addend, self.seconds))
        self.window = window
        return window


# A compiled request descriptor: node (None for an override or no match), stats key, addend,
# counter slots of its limits not replaced, kind.
_Item = tuple["DescriptorNode | None", str, int, tuple[_CounterSlot, ...], int]
# A compiled request: domain, descriptors (None: unknown domain), every counter slot in order.
_Compiled = tuple[str, "tuple[_Item, ...] | None", tuple[_CounterSlot, ...]]
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
        # Whole requests repeat too: their matched descriptors and counter slots (window keys
        # and ops reused while a window lasts) are kept per Request, for the current config.
        self._compiled: dict[Request, _Compiled] = {}

    async def decide(self, config: RateLimitConfig, request: Request) -> Decision:
        """Evaluate ``request``; raises InvalidRequestError or BackendError."""
        if config is not self._plans_for:
            self._plans.clear()
            self._compiled.clear()
            self._plans_for = config
        compiled = self._compiled.get(request)
        if compiled is None:
            compiled = self._compile(config, request)
        domain_name, items, slots = compiled
        if items is None:
            unmatched = (_NO_LIMIT,) * len(request.descriptors)
            return Decision(_OK, unmatched, (), (), False, False, self._metadata(
                request, items, unmatched) if self.settings.response_dynamic_metadata else None)

        now = self._clock()
        inow = int(now)
        # Build every counter op first so the backend sees one batch (one Redis round trip).
        # Window keys and fixed-window ops are reused while the window lasts; the per-call
        # view (window, op index) stays local because calls interleave across the await.
        ops: list[CounterOp] = []
        op_slots: list[_CounterSlot] = []
        picked: list[tuple[_Window, int]] = []
        cache = self._over_cache if self.settings.local_cache else None
        cached_any = False
        for slot in slots:
            seconds = slot.seconds
            start = inow - inow % seconds
            win = slot.window
            if win[0] != start:
                win = slot.rewindow(start)
            if slot.sliding:
                picked.append((win, len(ops)))
                op_slots.append(slot)
                ops.append(CounterOp(
                    win[1], slot.addend, 2 * seconds, win[3],
                    max(0.0, (win[2] - now) / seconds), slot.limit,
                ))
                continue
            if cache is not None:
                until = cache.get(win[1])
                if until is not None and until > now:
                    picked.append((win, -1))
                    cached_any = True
                    continue
            picked.append((win, len(ops)))
            op_slots.append(slot)
            ops.append(win[3])

        if ops and self.settings.stop_increment_when_over_limit:
            ops = await self._stop_increments(ops, op_slots, cached_any)
        results = await self.backend.apply(ops) if ops else []

        statuses: list[Status] = []
        stats: list[StatDelta] = []
        quota_total = quota_over = 0
        global_quota = self.settings.quota_mode
        want_headers = self.settings.response_headers
        headline: Status | None = None
        headline_remaining = MAX_REMAINING
        over_any = False
        pos = 0
        for node, stats_key, addend, row, kind in items:
            if kind != _COUNTED:
                # Neither touches the backend nor counts in the stats, as in the reference.
                if kind == _UNLIMITED_KIND:
                    statuses.append(_UNLIMITED)
                else:
                    # No match, a whitelist node, or every limit replaced: no limit. Under the
                    # global quota mode it is still one of the quota descriptors (an OK one).
                    statuses.append(_NO_LIMIT)
                    quota_total += global_quota
                continue
            chosen = None
            over = near = cached = 0
            for slot in row:
                win, index = picked[pos]
                pos += 1
                lim = slot.lim
                reset = win[2] - inow  # whole seconds, as the reference: unit - now % unit
                if index < 0:
                    status = Status(_OVER, lim, 0, reset)
                    d_over, d_near, cached = addend, 0, addend
                else:
                    after = results[index]
                    before = after - addend
                    limit = slot.limit
                    threshold = slot.near_threshold
                    if after > limit:
                        if before >= limit:
                            d_over, d_near = addend, 0
                        else:
                            # The addend straddles the limit: the part below it was near.
                            d_over = after - limit
                            d_near = limit - max(threshold, before)
                        if cache is not None and not slot.sliding:
                            cache[win[1]] = win[2]
                            if len(cache) > self.settings.local_cache_entries:
                                self._sweep_cache(now)
                        status = Status(_OVER, lim, 0, reset)
                    else:
                        d_over = 0
                        d_near = 0
                        if after > threshold:
                            d_near = addend if before >= threshold else after - threshold
                        status = Status(_OK, lim, limit - after, reset)
                if chosen is None:
                    chosen, over, near = status, d_over, d_near
                else:
                    if d_over > over:
                        over = d_over
                    if d_near > near:
                        near = d_near
                    if _tighter(status, chosen):
                        chosen = status
            assert chosen is not None
            shadow = 0
            quota = global_quota or (node is not None and node.quota_mode)
            if chosen.code is _OVER:
                if node is not None and node.shadow_mode:
                    shadow = addend
                    chosen = Status(_OK, chosen.limit, 0, chosen.reset_seconds)
                elif not quota:
                    over_any = True
                within = 0
            else:
                within = addend
            stats.append(StatDelta(domain_name, stats_key, addend, over, near,
                                   within, shadow, cached))
            statuses.append(chosen)
            if want_headers:
                # The reference's pick: the fewest remaining, but a non-quota descriptor over
                # its limit always takes over (the last one, if several are).
                if chosen.code is _OVER and not quota:
                    headline, headline_remaining = chosen, 0
                elif chosen.remaining < headline_remaining:
                    headline, headline_remaining = chosen, chosen.remaining
            if quota:
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
            self._headers(headline) if headline is not None else (),
            tuple(stats),
            True,
            global_shadow,
            self._metadata(request, items, statuses)
            if self.settings.response_dynamic_metadata else None,
        )

    async def _stop_increments(
        self, ops: list[CounterOp], slots: list[_CounterSlot], cached_any: bool
    ) -> list[CounterOp]:
        """STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT: which fixed-window counters still count.

        As the reference decides it: a key answered from the local cache stops every increment
        of the request; otherwise the counters are read first, and if some would pass their
        limit with this hit, only those are incremented (the others keep their count).
        Sliding-window ops never count a rejected hit anyway and pass through unchanged.
        """
        fixed = [i for i, op in enumerate(ops) if op.prev_key is None]
        if not fixed:
            return ops
        if cached_any:
            exceeding: set[int] = set()
        else:
            current = await self.backend.apply([ops[i]._replace(addend=0) for i in fixed])
            exceeding = {
                i for i, now_count in zip(fixed, current, strict=True)
                if now_count + ops[i].addend > slots[i].limit
            }
            if not exceeding:
                return ops
        out = list(ops)
        for i in fixed:
            if i not in exceeding:
                out[i] = ops[i]._replace(addend=0)
        return out

    def _metadata(
        self, request: Request, items: tuple[_Item, ...] | None, statuses: Sequence[Status]
    ) -> dict[str, Any]:
        """RESPONSE_DYNAMIC_METADATA: the request, and the metadata of the limits that passed.

        The reference's shape: ``domain``; ``descriptors`` (``entries`` as ``key=value``,
        ``limit`` for an override, ``hitsAddend`` when the descriptor sets one); ``hitsAddend``
        when the request sets one; ``metadata``: the ``metadata`` maps of every descriptor whose
        limit answered OK, merged (nested maps merged, the first value of a key kept).
        """
        descriptors: list[dict[str, Any]] = []
        for desc in request.descriptors:
            out: dict[str, Any] = {"entries": [f"{k}={v}" for k, v in desc.entries]}
            if desc.override is not None:
                out["limit"] = (f"requests_per_unit:{desc.override.requests_per_unit} "
                                f"unit:{desc.override.unit.upper()}")
            if desc.hits_addend is not None:
                out["hitsAddend"] = desc.hits_addend
            descriptors.append(out)
        data: dict[str, Any] = {"domain": request.domain, "descriptors": descriptors}
        if request.hits_addend:
            data["hitsAddend"] = request.hits_addend
        merged: dict[str, Any] = {}
        for item, status in zip(items or (), statuses, strict=False):
            node, kind = item[0], item[4]
            if (kind == _COUNTED and status.code is _OK and node is not None
                    and node.metadata):
                _merge_metadata(merged, node.metadata)
        if merged:
            data["metadata"] = merged
        return data

    def _compile(self, config: RateLimitConfig, request: Request) -> _Compiled:
        """Match a request once: per descriptor its node, limits, addend and counter slots."""
        domain_name, descriptors, request_addend = request
        if not domain_name:
            raise InvalidRequestError("rate limit domain must not be empty")
        if not descriptors:
            raise InvalidRequestError("rate limit descriptor list must not be empty")
        domain = config.by_domain.get(domain_name)
        if domain is None:
            # Not cached: unknown domains are unbounded input, and the answer is cheap anyway.
            return (domain_name, None, ())
        default_addend = request_addend or 1
        matched: list[_Plan] = []
        replaced: frozenset[str] = frozenset()
        for entries, _, override in descriptors:
            if override is not None:
                # Envoy's per-request override replaces whatever the config says; its stats
                # key is every entry's key_value, as in the reference (the cardinality cap in
                # ratelimit.metrics bounds the series).
                matched.append((None, (override,), _cache_key(domain_name, entries, None),
                                _override_stats_key(entries)))
                continue
            plan = self._plans.get((domain_name, entries))
            if plan is None:
                plan = self._plan(domain, entries)
            matched.append(plan)
            node = plan[0]
            if node is not None and node.replaces:
                replaced |= node.replaces
        items: list[_Item] = []
        slots: list[_CounterSlot] = []
        ratio = self._ratio
        for desc, (node, limits, base, stats_key) in zip(descriptors, matched, strict=True):
            addend = desc.hits_addend
            if addend is None:
                addend = default_addend
            if not limits:
                items.append((node, stats_key, addend, (), _NO_LIMIT_KIND))
                continue
            if limits[0].unlimited:
                items.append((node, stats_key, addend, (), _UNLIMITED_KIND))
                continue
            several = len(limits) > 1
            row = tuple(
                _CounterSlot(lim, addend, f"{base}{lim.unit}_" if several else base, ratio)
                for lim in limits
                if not (lim.name and lim.name in replaced)
            )
            slots.extend(row)
            items.append((node, stats_key, addend, row, _COUNTED if row else _NO_LIMIT_KIND))
        compiled: _Compiled = (domain_name, tuple(items), tuple(slots))
        if len(self._compiled) >= _REQUEST_CACHE:
            self._compiled.clear()
        self._compiled[request] = compiled
        return compiled

    def _plan(self, domain: Domain, entries: tuple[tuple[str, str], ...]) -> _Plan:
        """Match ``entries`` once and remember the node, counter-key base and stats key."""
        node = domain.find(entries)
        if node is None or not node.limits:
            plan: _Plan = (node, (), "", "")
        else:
            plan = (node, node.limits, _cache_key(domain.name, entries, node),
                    domain.stats_key(entries))
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[(domain.name, entries)] = plan
        return plan

    def _sweep_cache(self, now: float) -> None:
        for key in [k for k, until in self._over_cache.items() if until <= now]:
            del self._over_cache[key]
        if len(self._over_cache) > self.settings.local_cache_entries // 2:
            # Mostly live keys: start over rather than sweep again on every insert (the cache
            # only saves backend calls; an evicted key is simply asked again).
            self._over_cache.clear()

    def _headers(self, status: Status) -> tuple[tuple[str, str], ...]:
        """RateLimit-* headers (names from the settings) for the chosen descriptor status."""
        if status.limit is None:
            return ()
        s = self.settings
        return (
            (s.limit_header, str(status.limit.requests_per_unit)),
            (s.remaining_header, str(status.remaining)),
            (s.reset_header, str(status.reset_seconds or 0)),
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


def _override_stats_key(entries: tuple[tuple[str, str], ...]) -> str:
    """``key1_value1.key2`` (an empty value leaves the key alone), as the reference names it."""
    return ".".join(f"{k}_{v}" if v else k for k, v in entries)


def _merge_metadata(dest: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Merge ``src`` into ``dest``: maps recursively, otherwise the value already there stays."""
    for key, value in src.items():
        if key not in dest:
            dest[key] = _copy(value)
        elif isinstance(dest[key], dict) and isinstance(value, Mapping):
            _merge_metadata(dest[key], value)


def _copy(value: Any) -> Any:
    """A deep copy of YAML data, so merging never changes the config's own maps."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
