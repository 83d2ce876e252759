"""Fast counters and histograms for the request path, exported through prometheus_client.

prometheus_client's ``Counter.inc`` and ``Histogram.observe`` take a lock (and a histogram walks
every bucket) on each call. The services count on the event-loop thread, several times per
request, so here a count is a plain ``+=`` on a Python list slot and the numbers become metric
families only when ``/metrics`` is scraped::

    registry = CollectorRegistry()
    calls = Counter("svc_calls", "Calls by result.", ["result"], preset=[("ok",)],
                    registry=registry)
    latency = Histogram("svc_seconds", "Call time.", (0.001, 0.01, 0.1), registry=registry)
    ...
    calls.labels("ok").inc()                        # or keep the child: ok = calls.labels("ok")
    latency.observe(0.004)
    registry.get_sample_value("svc_calls_total", {"result": "ok"})   # 1.0

The constructors mirror prometheus_client's (name without ``_total``, help, label names,
``registry=``), so adopting these is mostly an import change. For several counters over the
same labels updated together, :class:`CounterGroup` keeps
one list per label set (``slot[i] += n`` for counter ``i``): one dict lookup for all of them.

What a scrape shows is what prometheus_client's own classes would show: counters get
``_total`` and ``_created``, histograms cumulative ``_bucket{le}`` (labels spelled as
prometheus_client spells them), ``_count`` and ``_sum`` (no ``_created``); series appear in the
order they were first used, ``preset`` ones first.

Concurrency: there is no lock. The updates and the scrape are meant to run on one event-loop
thread (as all three services do); from several threads an increment can, rarely, be lost,
never corrupt the families. Label values are bounded by the caller, or by ``max_series``: past
it, new label sets are counted under the ``overflow`` label values.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "OVERFLOW",
    "Counter",
    "CounterChild",
    "CounterGroup",
    "Histogram",
    "HistogramChild",
]

#: The label value a series is counted under once ``max_series`` label sets exist.
OVERFLOW = "_overflow_"

Labels = tuple[str, ...]
S = TypeVar("S")
#: Where a label set goes past ``max_series``: one label value for every label, or a function
#: of the label values (e.g. keep the first label, overflow the second).
Overflow = str | Callable[[Labels], Labels]


class _Series(Generic[S]):
    """Label sets -> mutable slots, with an optional cap; shared by counters and histograms."""

    __slots__ = ("_make", "created", "labelnames", "max_series", "overflow", "slots")

    def __init__(self, labelnames: Sequence[str], make: Callable[[], S], max_series: int | None,
                 overflow: Overflow) -> None:
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self.overflow: Callable[[Labels], Labels]
        if callable(overflow):
            self.overflow = overflow
        else:
            fixed = (overflow,) * len(self.labelnames)
            self.overflow = lambda _: fixed
        self._make = make
        self.slots: dict[Labels, S] = {}
        self.created: dict[Labels, float] = {}

    def new(self, values: Labels) -> S:
        """The slot for ``values``, created (or the overflow one, past the cap) on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"expected {len(self.labelnames)} label values, got {values!r}")
        slots = self.slots
        if self.max_series is not None and len(slots) >= self.max_series:
            values = self.overflow(values)
            found = slots.get(values)
            if found is not None:
                return found
        slot = self._make()
        slots[values] = slot
        self.created[values] = time.time()
        return slot


class CounterGroup(Collector):
    """Counters that share label names; each label set has one list, ``slot[i]`` = counter i.

    ``slot(*values)`` is the hot-path handle: keep it or look it up, then add to its items.
    """

    __slots__ = ("_series", "names")

    def __init__(
        self,
        names: Sequence[tuple[str, str]],
        labelnames: Sequence[str] = (),
        *,
        max_series: int | None = None,
        overflow: Overflow = OVERFLOW,
        preset: Iterable[Labels] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``names``: (name without ``_total``, help) per counter, in slot order; ``preset``:
        label sets exported (as zeros) from the start; registered on ``registry`` if given."""
        self.names = tuple(names)
        width = len(self.names)
        self._series: _Series[list[float]] = _Series(
            labelnames, lambda: [0] * width, max_series, overflow)
        for values in preset:
            self._series.new(tuple(values))
        if not self._series.labelnames:
            self._series.new(())
        if registry is not None:
            registry.register(self)

    @property
    def series(self) -> Mapping[Labels, list[float]]:
        """Label values -> slot for every series so far (for lookups in hot loops only)."""
        return self._series.slots

    def slot(self, *values: str) -> list[float]:
        """The counters of one label set (created on first use), to add to in place."""
        found = self._series.slots.get(values)
        return found if found is not None else self._series.new(values)

    def values(self, *values: str) -> tuple[float, ...]:
        """The current counts of one label set (zeros if never used), in ``names`` order."""
        found = self._series.slots.get(values)
        return tuple(found) if found is not None else (0,) * len(self.names)

    def describe(self) -> Iterator[Metric]:
        """The families, so the registry checks their names at registration."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """One ``CounterMetricFamily`` per counter, in ``names`` order."""
        series = self._series
        items = list(series.slots.items())  # a copy: a new series may appear mid-scrape
        created = series.created
        for index, (name, documentation) in enumerate(self.names):
            family = CounterMetricFamily(name, documentation, labels=series.labelnames)
            for values, slot in items:
                family.add_metric(values, slot[index], created=created.get(values))
            yield family


class CounterChild:
    """One series of a :class:`Counter`."""

    __slots__ = ("_slot",)

    def __init__(self, slot: list[float]) -> None:
        self._slot = slot

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (default 1)."""
        self._slot[0] += amount

    @property
    def value(self) -> float:
        """The current count."""
        return self._slot[0]


class Counter(CounterGroup):
    """A single counter, like prometheus_client's, with ``labels(...)`` and ``inc``."""

    __slots__ = ("_children",)

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        max_series: int | None = None,
        overflow: Overflow = OVERFLOW,
        preset: Iterable[Labels] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``name`` without the ``_total`` suffix (prometheus_client adds it)."""
        self._children: dict[Labels, CounterChild] = {}
        super().__init__([(name, documentation)], labelnames, max_series=max_series,
                         overflow=overflow, preset=preset, registry=registry)

    def labels(self, *values: str) -> CounterChild:
        """The series for ``values`` (created on first use); keep it on hot paths."""
        child = self._children.get(values)
        if child is None:
            child = CounterChild(self.slot(*values))
            if values in self._series.slots:  # not one past the cap: those share a slot
                self._children[values] = child
        return child

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` to the unlabelled counter."""
        self._series.slots[()][0] += amount

    def value(self, *values: str) -> float:
        """The current count of one label set (0 if never used)."""
        return self.values(*values)[0]


class _Buckets:
    """One histogram series: a count per bucket (the last one +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        # An attribute, not one more list item: measured faster to add a float to.
        self.sum = 0.0


class HistogramChild:
    """One series of a :class:`Histogram`."""

    __slots__ = ("_bounds", "_counts", "_series")

    def __init__(self, bounds: tuple[float, ...], series: _Buckets) -> None:
        self._bounds = bounds
        self._series = series
        self._counts = series.counts

    def observe(self, value: float) -> None:
        """Count one observation."""
        # bisect_left: a value equal to a bound belongs to that bucket (le means "<=").
        self._counts[bisect_left(self._bounds, value)] += 1
        self._series.sum += value


class Histogram(Collector):
    """A fixed-bucket histogram: ``observe`` is a bisect and two additions."""

    __slots__ = ("_children", "_le", "_root", "_root_counts", "_series", "bounds",
                 "documentation", "name")

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        *,
        max_series: int | None = None,
        overflow: Overflow = OVERFLOW,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``buckets``: the finite upper bounds, ascending (``+Inf`` is implied)."""
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(set(bounds)) or any(b == float("inf") for b in bounds):
            raise ValueError(f"buckets must be finite and strictly ascending: {buckets!r}")
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        # repr of a float is prometheus_client's spelling of a finite bound (0.005, 1.0).
        self._le = (*(repr(b) for b in bounds), "+Inf")
        size = len(bounds) + 1
        self._series: _Series[_Buckets] = _Series(
            labelnames, lambda: _Buckets(size), max_series, overflow)
        self._children: dict[Labels, HistogramChild] = {}
        # The unlabelled series, so ``observe`` is as short as a child's.
        self._root = _Buckets(0) if labelnames else self._series.new(())
        self._root_counts = self._root.counts
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The series for ``values`` (created on first use); keep it on hot paths."""
        child = self._children.get(values)
        if child is None:
            series = self._series.slots.get(values) or self._series.new(values)
            child = HistogramChild(self.bounds, series)
            if values in self._series.slots:  # not one past the cap: those share a slot
                self._children[values] = child
        return child

    def observe(self, value: float) -> None:
        """Count one observation in the unlabelled histogram (use ``labels`` otherwise)."""
        self._root_counts[bisect_left(self.bounds, value)] += 1
        self._root.sum += value

    def count(self, *values: str) -> int:
        """Observations so far in one label set (0 if never used)."""
        series = self._series.slots.get(values)
        return sum(series.counts) if series is not None else 0

    def describe(self) -> Iterator[Metric]:
        """The family, so the registry checks its name at registration."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """The ``HistogramMetricFamily`` (cumulative buckets)."""
        series = self._series
        family = HistogramMetricFamily(self.name, self.documentation, labels=series.labelnames)
        for values, buckets in list(series.slots.items()):
            cumulative: list[tuple[str, float]] = []
            total = 0.0
            for le, count in zip(self._le, buckets.counts, strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(list(values), cumulative, buckets.sum)
        yield family
