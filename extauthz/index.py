"""Rule indexes: per action, the rules a request could match, found without trying them all.

A rule is indexed by one value it requires of one request attribute (``IndexKey``), chosen
from the model's attributes: a path, host or method every ``to`` entry requires positively
(exact values, prefixes, suffixes), else a header a positive ``when`` condition needs present.
A request then collects candidates by a few dict probes and tests only those, in policy/rule
order, so the per-request cost does not grow with the rule count. Rules without a key are
always candidates. The index is an optimization only: its answer is, by construction and by
the randomized tests, the first rule that brute force over every rule finds.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from extauthz.matchers import Attributes, Clause, FieldCheck, StringMatch
from extauthz.model import HOST, METHOD, PATH

if TYPE_CHECKING:
    from extauthz.compile import CompiledRule


@dataclass(frozen=True, slots=True)
class IndexKey:
    """How a rule is indexed: a value it requires of one request attribute.

    ``path``/``path_ci``: exact paths, prefixes and suffixes (one of which the path must hit);
    ``host``/``method``: exact values; ``header``: the names in ``exact`` of headers the rule
    requires to be present (a positive ``request.headers[...]`` condition fails without one).
    """

    dimension: Literal["path", "path_ci", "host", "method", "header"]
    #: Distinct values, sorted (a tuple: iterated only, and 5x smaller than a frozenset).
    exact: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()



#: The model attribute each index dimension reads.
DIMENSION_ATTRIBUTES: dict[str, str] = {"path": PATH, "path_ci": PATH, "host": HOST,
                                        "method": METHOD}


def index_key(operations: Sequence[Clause], conditions: Clause) -> IndexKey | None:
    """Pick a value the rule requires of one attribute (else: always evaluate the rule).

    First a dimension every ``to`` operation constrains positively (path, host, method), else a
    header a positive ``when`` condition needs present.
    """
    key = _operation_key(operations) if operations else None
    if key is not None:
        return key
    for check in conditions.checks:
        # A missing header fails a positive header condition (values never match "absent").
        if not check.negate and check.key.startswith(HEADER_PREFIX) and check.key.endswith("]"):
            name = check.key[len(HEADER_PREFIX):-1].strip().lower()
            return IndexKey(dimension="header", exact=(name,))
    return None


HEADER_PREFIX = "request.headers["


def _positive(clause: Clause, attribute: str) -> FieldCheck | None:
    return next((c for c in clause.checks if c.key == attribute and not c.negate), None)


def _operation_key(operations: Sequence[Clause]) -> IndexKey | None:
    for dimension in ("path", "host", "method"):
        attribute = DIMENSION_ATTRIBUTES[dimension]
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        ok = True
        ci = False
        for clause in operations:
            check = _positive(clause, attribute)
            if check is None or not isinstance(check.matcher, StringMatch) \
                    or check.matcher.presence:
                ok = False
                break
            matcher = check.matcher
            if dimension != "path" and (matcher.index_prefixes or matcher.suffixes):
                ok = False
                break
            ci = ci or matcher.ignore_case
            exact.update(matcher.exact)
            prefixes.extend(matcher.index_prefixes)
            suffixes.extend(matcher.suffixes)
        if ok:
            dim: Literal["path", "path_ci", "host", "method"]
            dim = "path_ci" if dimension == "path" and ci else dimension
            return IndexKey(dimension=dim, exact=tuple(sorted(exact)), prefixes=tuple(prefixes),
                            suffixes=tuple(suffixes))
    return None


def implied_check(operations: Sequence[Clause], key: IndexKey | None) -> FieldCheck | None:
    """The operation field that finding the rule through ``key`` proves, if any.

    The index finds a rule only by a value of its key that the request's attribute hits:
    equal to an exact value, starting with a prefix, ending with a suffix (the same tests the
    field's matcher makes, on the same attribute). With a single ``to`` entry that hit is the
    field's own match, so the field needs no second test. Not so for a template (the index
    only knows its literal head), for several ``to`` entries (the hit may come from another
    entry's values) or for header keys (presence is not the condition's value).
    """
    if key is None or key.dimension == "header" or len(operations) != 1:
        return None
    check = _positive(operations[0], DIMENSION_ATTRIBUTES[key.dimension])
    if check is None or not isinstance(check.matcher, StringMatch) or check.matcher.templates \
            or check.matcher.presence or check.many:
        return None
    return check


class PathIndex:
    """Rule positions by exact path, path prefix and path suffix.

    Prefixes are found without probing every prefix length (which grows with the number of
    distinct prefixes). Most end with "/" (``/static/*``, a template's head ``/api/v1/``): a
    path can only start with one of those at one of its own slashes, so they are probed there,
    one dict lookup per slash at a length some such prefix has (bounded by the path's depth).
    That only pays off among many prefixes: below ``SLASH_PROBE_MIN`` all are bisected. The
    others are kept sorted, and for each one the chain of other such prefixes it starts
    with. Every one of them that the path starts with is a prefix of the greatest that sorts at
    or before the path, so one bisection and a walk along that short chain find them all.
    """

    __slots__ = ("chains", "dir_lengths", "dir_max", "dir_prefix", "exact", "prefix",
                 "sorted_prefixes", "suffix", "suffix_lengths", "used")

    #: Prefix count from which "/"-ended prefixes are probed at the path's slashes rather than
    #: bisected (a few bisection steps over a small, cache-hot list are cheaper).
    SLASH_PROBE_MIN = 64

    def __init__(self) -> None:
        # Lists while adding; ``freeze`` turns them into tuples (one object less per probe).
        self.exact: dict[str, Any] = {}
        self.prefix: dict[str, Any] = {}
        self.suffix: dict[str, Any] = {}
        self.dir_prefix: dict[str, tuple[int, ...]] = {}
        self.dir_lengths: frozenset[int] = frozenset()
        self.dir_max = 0
        self.sorted_prefixes: list[str] = []
        self.chains: list[tuple[tuple[str, tuple[int, ...]], ...]] = []
        self.suffix_lengths: tuple[int, ...] = ()
        self.used = False

    def add(self, key: IndexKey, position: int) -> None:
        for value in key.exact:
            self.exact.setdefault(value, []).append(position)
        for value in key.prefixes:
            self.prefix.setdefault(value, []).append(position)
        for value in key.suffixes:
            self.suffix.setdefault(value, []).append(position)

    def freeze(self) -> None:
        for table in (self.exact, self.prefix, self.suffix):
            for value, positions in table.items():
                table[value] = tuple(positions)
        if len(self.prefix) >= self.SLASH_PROBE_MIN:
            self.dir_prefix = {p: v for p, v in self.prefix.items() if p.endswith("/")}
        self.dir_lengths = frozenset(len(p) for p in self.dir_prefix)
        self.dir_max = max(self.dir_lengths, default=0)
        self.sorted_prefixes = sorted(p for p in self.prefix if p not in self.dir_prefix)
        # In sorted order a prefix's own indexed prefixes come before it and stay on the stack
        # (anything sorting between q and a string starting with q starts with q too).
        stack: list[str] = []
        for value in self.sorted_prefixes:
            while stack and not value.startswith(stack[-1]):
                stack.pop()
            self.chains.append(tuple((p, tuple(self.prefix[p]))
                                     for p in (value, *reversed(stack))))
            stack.append(value)
        # Suffixes are few in practice (file extensions): one dict probe per distinct length.
        self.suffix_lengths = tuple(sorted({len(p) for p in self.suffix}))
        self.used = bool(self.exact or self.prefix or self.suffix)

    def collect(self, path: str, found: list[int]) -> None:
        hit = self.exact.get(path)
        if hit:
            found.extend(hit)
        if self.dir_max:
            lengths, table, limit = self.dir_lengths, self.dir_prefix, self.dir_max
            at = path.find("/")
            while 0 <= at < limit:
                at += 1
                if at in lengths:
                    hit = table.get(path[:at])
                    if hit:
                        found.extend(hit)
                at = path.find("/", at)
        if self.sorted_prefixes:
            at = bisect.bisect_right(self.sorted_prefixes, path)
            if at:
                for prefix, positions in self.chains[at - 1]:
                    if path.startswith(prefix):
                        found.extend(positions)
        if self.suffix_lengths:
            size = len(path)
            suffix = self.suffix
            for n in self.suffix_lengths:
                if n > size:
                    break
                hit = suffix.get(path[-n:])
                if hit:
                    found.extend(hit)


class RuleIndex:
    """Rules of one action, indexed so a request only evaluates rules that could match."""

    __slots__ = ("always", "header", "host", "method", "path", "path_ci", "rules", "tests")

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(sorted(rules, key=lambda r: r.order))
        #: Per position, what a candidate still has to pass: the rule's residual (the index
        #: found it through its key) or, for rules without a key, its full test. Reached
        #: straight from the position, without touching the rule object.
        self.tests = tuple(r.test if r.index_key is None else r.residual for r in self.rules)
        self.always: list[int] = []
        self.path = PathIndex()
        self.path_ci = PathIndex()
        self.host: dict[str, Any] = {}
        self.method: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        for i, rule in enumerate(self.rules):
            key = rule.index_key
            if key is None:
                self.always.append(i)
            elif key.dimension == "path":
                self.path.add(key, i)
            elif key.dimension == "path_ci":
                self.path_ci.add(key, i)
            else:
                # Host, method and header keys are exact values only (see index_key).
                table = {"host": self.host, "method": self.method,
                         "header": self.header}[key.dimension]
                for value in key.exact:
                    table.setdefault(value, []).append(i)
        self.path.freeze()
        self.path_ci.freeze()
        for table in (self.host, self.method, self.header):
            for value, positions in table.items():
                table[value] = tuple(positions)

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, attrs: Attributes) -> list[int]:
        """Positions of rules that may match (a superset of the matching ones), in order."""
        found: list[int] = list(self.always)
        if self.path.used:
            self.path.collect(attrs.path, found)
        if self.path_ci.used:
            self.path_ci.collect(attrs.path_lower, found)
        if self.host:
            hit = self.host.get(attrs.host)
            if hit:
                found.extend(hit)
        if self.method:
            hit = self.method.get(attrs.method)
            if hit:
                found.extend(hit)
        if self.header:
            headers = attrs.headers
            for name, hit in self.header.items():
                if name in headers:
                    found.extend(hit)
        if len(found) > 1:
            found = sorted(set(found))
        return found

    def first_position(self, attrs: Attributes) -> int:
        """Position in ``rules`` of the first rule (policy/rule order) that matches, or -1."""
        tests = self.tests
        for i in self.candidates(attrs):
            if tests[i](attrs):
                return i
        return -1

    def first_match(self, attrs: Attributes) -> CompiledRule | None:
        """The first rule (in policy/rule order) that matches, or None."""
        i = self.first_position(attrs)
        return None if i < 0 else self.rules[i]



__all__ = ["DIMENSION_ATTRIBUTES", "IndexKey", "PathIndex", "RuleIndex", "implied_check",
           "index_key"]
