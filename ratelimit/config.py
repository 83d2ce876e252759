"""Limits config: envoyproxy/ratelimit's YAML -> validated frozen models -> lookup tree.

A config PATH is one YAML file or a directory of them; each file holds one domain (several YAML
documents in one file are several domains). The format is envoyproxy/ratelimit's, unchanged,
and validation gives the same error texts, each prefixed with the file name (``ConfigError``
also carries the line and the field).

Two opt-in extensions, ignored by plain files:

- ``rate_limits:`` beside (or instead of) ``rate_limit:`` puts several limits on one descriptor
  (e.g. 10/second and 1000/day); every one of them must pass.
- ``algorithm: sliding_window`` inside a rate limit switches that limit from the epoch-aligned
  fixed window to a sliding-window counter (default ``fixed_window``).

The module is pure: no I/O besides reading the files, no grpc, no clock.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.yamlsrc import SourceDoc, config_files, load_documents

__all__ = [
    "UNIT_SECONDS",
    "Algorithm",
    "DescriptorNode",
    "Domain",
    "KeyEntry",
    "Limit",
    "RateLimitConfig",
    "load_config",
    "load_texts",
]

#: Window length of every unit, as envoyproxy/ratelimit counts them (a month is 30 days, a
#: year 365 days; windows are aligned to the Unix epoch, so weeks start on Thursday).
UNIT_SECONDS: Mapping[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 604800,
    "month": 2592000,
    "year": 31536000,
}

# Every key envoyproxy/ratelimit accepts, plus our two opt-in extension keys. Like the reference,
# the key check is a generic walk over the whole document (a known key in an unusual place is
# ignored rather than rejected), so any file the reference loads loads here too.
_REFERENCE_KEYS = frozenset({
    "domain", "key", "value", "descriptors", "rate_limit", "unit", "requests_per_unit",
    "unlimited", "shadow_mode", "quota_mode", "name", "replaces", "detailed_metric",
    "value_to_metric", "share_threshold", "metadata",
})
_EXTENSION_KEYS = frozenset({"rate_limits", "algorithm"})
_VALID_KEYS = _REFERENCE_KEYS | _EXTENSION_KEYS


class Algorithm(enum.Enum):
    """How a limit counts: envoyproxy/ratelimit's fixed window, or our sliding window."""

    FIXED_WINDOW = "fixed_window"
    SLIDING_WINDOW = "sliding_window"


@dataclass(frozen=True, slots=True)
class Limit:
    """One configured limit: ``requests_per_unit`` per ``unit`` (or unlimited)."""

    unit: str
    requests_per_unit: int
    name: str = ""
    unlimited: bool = False
    replaces: tuple[str, ...] = ()
    algorithm: Algorithm = Algorithm.FIXED_WINDOW
    #: Window length in seconds (0 for an unlimited limit); derived from ``unit``.
    seconds: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Stored rather than computed per request: it is read on every hit.
        object.__setattr__(self, "seconds", UNIT_SECONDS.get(self.unit, 0))


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """Every config node for one descriptor key at one level of the tree.

    Lookup order is exact value, then wildcard patterns in config order, then the bare key.
    """

    exact: Mapping[str, DescriptorNode]
    wildcards: tuple[tuple[re.Pattern[str], DescriptorNode], ...]
    default: DescriptorNode | None

    def find(self, value: str) -> DescriptorNode | None:
        """The node a request entry with ``value`` matches at this key, if any."""
        node = self.exact.get(value)
        if node is not None:
            return node
        for pattern, candidate in self.wildcards:
            if pattern.fullmatch(value):
                return candidate
        return self.default


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    """One ``descriptors`` entry of the config, compiled.

    ``limits`` is empty for a node without ``rate_limit`` (no limit: a whitelist when it is the
    last entry of a request). ``stats_parts`` are the metric path parts from the domain root
    down to this node (``key`` or ``key_value`` as written); ``value_to_metric_levels`` and
    ``share_patterns`` give, per level, whether the runtime value goes into the metric path and
    which wildcard pattern replaces the runtime value in the counter key (share_threshold).
    """

    key: str
    value: str | None
    limits: tuple[Limit, ...]
    children: Mapping[str, KeyEntry]
    ordered_children: tuple[DescriptorNode, ...]
    stats_parts: tuple[str, ...]
    stats_key: str
    shadow_mode: bool = False
    quota_mode: bool = False
    detailed_metric: bool = False
    value_to_metric_levels: tuple[bool, ...] = ()
    share_patterns: tuple[str | None, ...] = ()
    line: int | None = None
    #: Every name this node's limits replace (``replaces``), for a quick check per request.
    replaces: frozenset[str] = frozenset()
    #: The descriptor's ``metadata`` map as written (returned with RESPONSE_DYNAMIC_METADATA).
    metadata: Mapping[str, Any] | None = None

    #: True when the metric path needs runtime values (detailed_metric, value_to_metric).
    runtime_stats: bool = field(init=False, compare=False)
    #: True when some level counts all values matching a wildcard together (share_threshold).
    shares: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once at load time; both are read on every request.
        object.__setattr__(
            self, "runtime_stats", self.detailed_metric or any(self.value_to_metric_levels)
        )
        object.__setattr__(self, "shares", any(p is not None for p in self.share_patterns))


@dataclass(frozen=True, slots=True)
class Domain:
    """One domain: its top-level keys and the file it came from."""

    name: str
    root: Mapping[str, KeyEntry]
    ordered: tuple[DescriptorNode, ...]
    file: str

    def find(self, entries: Sequence[tuple[str, str]]) -> DescriptorNode | None:
        """The node matching a whole request descriptor, or None.

        As in envoyproxy/ratelimit, each entry descends one level and the limit that counts is
        the one at the request's last entry: a request deeper than the tree gets nothing.
        """
        level = self.root
        node: DescriptorNode | None = None
        for key, value in entries:
            entry = level.get(key)
            if entry is None:
                return None
            node = entry.find(value)
            if node is None:
                return None
            level = node.children
        return node

    def stats_key(self, entries: Sequence[tuple[str, str]]) -> str:
        """The metric key path (without the domain) for a request matching a limit here.

        Built as envoyproxy/ratelimit builds its stat names: the path as written in the config
        (``key_value`` for an exact value, the pattern for a wildcard, ``key`` for a bare key);
        ``value_to_metric`` puts a level's runtime value in (nothing for an empty value);
        ``detailed_metric`` on the limit's node puts every runtime value in; and a
        ``share_threshold`` level always shows its pattern, whatever the other two say, so all
        values sharing one counter also share one series.
        """
        level = self.root
        static: list[str] = []
        to_metric: list[str] = []
        detailed: list[str] = []
        shared: list[str | None] = []
        node: DescriptorNode | None = None
        for key, value in entries:
            detailed.append(f"{key}_{value}")
            entry = level.get(key)
            node = None
            how = ""
            if entry is not None:
                node = entry.exact.get(value)
                how = "exact"
                if node is None:
                    for pattern, candidate in entry.wildcards:
                        if pattern.fullmatch(value):
                            node, how = candidate, "wildcard"
                            break
                if node is None:
                    node, how = entry.default, "default"
            if node is None:
                break
            share = node.share_patterns[-1] if how == "wildcard" else None
            shared.append(share)
            static.append(node.stats_parts[-1])
            if share is not None:
                used = share
            elif how == "wildcard":
                used = value if node.value_to_metric_levels[-1] else str(node.value)
            elif how == "exact":
                used = value
            else:
                used = value if node.value_to_metric_levels[-1] else ""
            to_metric.append(f"{key}_{used}" if used else key)
            level = node.children
        if node is None:
            return ".".join(static)
        if node.detailed_metric:
            if any(p is not None for p in shared):
                return ".".join(
                    f"{k}_{p}" if p is not None else (f"{k}_{v}" if v else k)
                    for (k, v), p in zip(entries, shared, strict=False)
                )
            return ".".join(detailed)
        return ".".join(to_metric)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """All loaded domains, ready for lookups."""

    by_domain: Mapping[str, Domain] = field(default_factory=dict)

    @property
    def domains(self) -> tuple[str, ...]:
        """Domain names, in load order."""
        return tuple(self.by_domain)

    def domain(self, name: str) -> Domain | None:
        """The domain called ``name``, or None (an unknown domain means no limit)."""
        return self.by_domain.get(name)

    def descriptor_paths(self, domain: str) -> list[tuple[tuple[str, str | None], ...]]:
        """Every (key, value-or-None) path from the root to each node carrying a rate limit.

        Values are as written (wildcards kept); None stands for a bare key. Unknown domain: [].
        """
        found = self.by_domain.get(domain)
        if found is None:
            return []
        out: list[tuple[tuple[str, str | None], ...]] = []

        def walk(
            nodes: Iterable[DescriptorNode], prefix: tuple[tuple[str, str | None], ...]
        ) -> None:
            for node in nodes:
                path = (*prefix, (node.key, node.value))
                if node.limits:
                    out.append(path)
                walk(node.ordered_children, path)

        walk(found.ordered, ())
        return out

    def describe(self) -> dict[str, Any]:
        """The effective config as JSON-able data (for ``/config``)."""

        def node_json(node: DescriptorNode) -> dict[str, Any]:
            data: dict[str, Any] = {"key": node.key}
            if node.value is not None:
                data["value"] = node.value
            if node.limits:
                data["rate_limits"] = [
                    {"unlimited": True, "name": lim.name} if lim.unlimited else {
                        "name": lim.name, "unit": lim.unit,
                        "requests_per_unit": lim.requests_per_unit,
                        "algorithm": lim.algorithm.value, "replaces": list(lim.replaces),
                    }
                    for lim in node.limits
                ]
            for flag in ("shadow_mode", "quota_mode", "detailed_metric"):
                if getattr(node, flag):
                    data[flag] = True
            if node.ordered_children:
                data["descriptors"] = [node_json(c) for c in node.ordered_children]
            return data

        return {
            name: {"file": dom.file, "descriptors": [node_json(n) for n in dom.ordered]}
            for name, dom in self.by_domain.items()
        }


# --------------------------------------------------------------------------------- loading


def load_config(path: Path, *, merge_domains: bool = False) -> RateLimitConfig:
    """Load and validate a config PATH (one file or a directory of files).

    Raises ConfigError, whose text starts with the file name like envoyproxy/ratelimit's.
    ``merge_domains`` is the reference's MERGE_DOMAIN_CONFIG (see ``load_texts``).
    """
    files = config_files(path)
    texts: list[tuple[str, str]] = []
    for file in files:
        try:
            texts.append((file.name, file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"error loading config file: {exc}", file=file.name) from exc
    return load_texts(texts, merge_domains=merge_domains)


def load_texts(
    files: Sequence[tuple[str, str]], *, merge_domains: bool = False
) -> RateLimitConfig:
    """Build a config from ``(file name, YAML text)`` pairs (the pure core of load_config).

    The same domain in two documents is an error unless ``merge_domains``: then the later
    document's descriptors are added to the domain (envoyproxy/ratelimit's MERGE_DOMAIN_CONFIG).
    """
    by_domain: dict[str, Domain] = {}
    for name, text in files:
        try:
            docs = load_documents(text, name)
        except ConfigError as exc:
            # Keep the reference's wording; the YAML problem follows it.
            message = exc.message.removeprefix("invalid YAML: ")
            raise ConfigError(
                f"error loading config file: {message}", file=name, line=exc.line, field=exc.field
            ) from exc
        if not docs:
            raise ConfigError("config file cannot have empty domain", file=name)
        for doc in docs:
            try:
                domain = _compile_domain(doc)
                if domain.name in by_domain:
                    if not merge_domains:
                        raise _error(doc, f"duplicate domain '{domain.name}' in config file",
                                     ("domain",))
                    domain = _merge_domain(by_domain[domain.name], domain, doc)
            except ConfigError as exc:
                _point_at_key(exc, text, doc.index)
                raise
            by_domain[domain.name] = domain
    return RateLimitConfig(by_domain=by_domain)


def _error(doc: SourceDoc, message: str, path: Sequence[str | int] = ()) -> ConfigError:
    """A ConfigError for ``path`` that remembers the path (see ``_point_at_key``)."""
    err = doc.error(message, path)
    err.yaml_path = tuple(path)  # type: ignore[attr-defined]
    return err


def _point_at_key(err: ConfigError, text: str, index: int) -> None:
    """Make an error about a mapping key name the key's line, not its value's.

    The shared loader records where values start; for ``ratelimit:`` followed by a nested map
    that is the next line. Errors are rare, so re-reading the nodes here costs nothing.
    """
    path = getattr(err, "yaml_path", ())
    if not path or not isinstance(path[-1], str):
        return
    try:
        node: Any = list(yaml.compose_all(text, Loader=yaml.SafeLoader))[index]
    except (yaml.YAMLError, IndexError):
        return
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if str(key_node.value) == part:
                    if last:
                        err.line = key_node.start_mark.line + 1
                        return
                    node = value_node
                    break
            else:
                return
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and not last:
            if part >= len(node.value):
                return
            node = node.value[part]
        else:
            return


def _check_keys(doc: SourceDoc, value: Any, path: tuple[str | int, ...]) -> None:
    """The reference's generic walk: string keys, known keys, lists of maps only."""
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise _error(doc, f"config error, key is not of type string: {_scalar(key)}", path)
            if key not in _VALID_KEYS:
                raise _error(doc, f"config error, unknown key '{key}'", (*path, key))
            if key == "metadata":
                continue  # free-form user data returned to Envoy, not part of the schema
            _check_keys(doc, child, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise _error(doc,
                    "config error, yaml file contains list of type other than map: "
                    f"{_scalar(item)}",
                    (*path, index),
                )
            _check_keys(doc, item, (*path, index))


def _scalar(value: Any) -> str:
    """A scalar rendered the way YAML users wrote it (``true``, not ``True``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _string(doc: SourceDoc, data: Mapping[str, Any], key: str, path: tuple[str | int, ...]) -> str:
    value = data.get(key)
    if isinstance(value, (dict, list)):
        raise _error(doc, f"config error, '{key}' must be a string", (*path, key))
    return _scalar(value)


def _bool(doc: SourceDoc, data: Mapping[str, Any], key: str, path: tuple[str | int, ...]) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _error(doc, f"config error, '{key}' must be true or false", (*path, key))
    return value


class _DomainBuilder:
    """Compiles one document; keeps the composite keys seen so duplicates are reported."""

    def __init__(self, doc: SourceDoc, domain: str) -> None:
        self.doc = doc
        self.domain = domain
        self.composite: set[str] = set()

    def level(
        self,
        items: Any,
        path: tuple[str | int, ...],
        parents: tuple[tuple[str, bool, str | None], ...],
    ) -> tuple[dict[str, KeyEntry], tuple[DescriptorNode, ...]]:
        if items is None:
            return {}, ()
        if not isinstance(items, list):
            raise _error(self.doc, "config error, 'descriptors' must be a list", path)
        nodes = [self.node(item, (*path, i), parents) for i, item in enumerate(items)]
        return _table(nodes), tuple(nodes)

    def node(
        self,
        data: Any,
        path: tuple[str | int, ...],
        parents: tuple[tuple[str, bool, str | None], ...],
    ) -> DescriptorNode:
        doc = self.doc
        key = _string(doc, data, "key", path)
        if not key:
            raise _error(doc, "descriptor has empty key", path)
        value: str | None = _string(doc, data, "value", path) if "value" in data else None
        if value == "":
            value = None
        part = f"{key}_{value}" if value is not None else key
        composite = ".".join([self.domain, *(p for p, _, _ in parents), part])
        if composite in self.composite:
            raise _error(doc, f"duplicate descriptor composite key '{composite}'", path)
        self.composite.add(composite)

        shadow = _bool(doc, data, "shadow_mode", path)
        quota = _bool(doc, data, "quota_mode", path)
        detailed = _bool(doc, data, "detailed_metric", path)
        to_metric = _bool(doc, data, "value_to_metric", path)
        share = _bool(doc, data, "share_threshold", path)
        if share and (value is None or "*" not in value):
            raise _error(doc,
                "share_threshold can only be used with a value containing a wildcard '*'",
                (*path, "share_threshold"),
            )
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise _error(doc, "config error, 'metadata' must be a map", (*path, "metadata"))

        limits = self.limits(data, path)
        here = (*parents, (part, to_metric, value if share else None))
        children, ordered = self.level(data.get("descriptors"), (*path, "descriptors"), here)
        stats_parts = tuple(p for p, _, _ in here)
        return DescriptorNode(
            key=key,
            value=value,
            limits=limits,
            children=children,
            ordered_children=ordered,
            stats_parts=stats_parts,
            stats_key=".".join(stats_parts),
            shadow_mode=shadow,
            quota_mode=quota,
            detailed_metric=detailed,
            value_to_metric_levels=tuple(flag for _, flag, _ in here),
            share_patterns=tuple(pattern for _, _, pattern in here),
            line=doc.line_of(path),
            replaces=frozenset(name for lim in limits for name in lim.replaces),
            metadata=metadata,
        )

    def limits(self, data: Mapping[str, Any], path: tuple[str | int, ...]) -> tuple[Limit, ...]:
        blocks: list[tuple[Any, tuple[str | int, ...]]] = []
        if data.get("rate_limit") is not None:
            blocks.append((data["rate_limit"], (*path, "rate_limit")))
        extra = data.get("rate_limits")
        if extra is not None:
            if not isinstance(extra, list):
                raise _error(self.doc,
                    "config error, 'rate_limits' must be a list", (*path, "rate_limits")
                )
            blocks.extend((item, (*path, "rate_limits", i)) for i, item in enumerate(extra))
        limits = [self.limit(block, where) for block, where in blocks]
        # Several limits on one descriptor count in separate windows; two with the same unit would
        # share a counter, which is never what anyone means.
        units: set[str] = set()
        for lim, (_, where) in zip(limits, blocks, strict=True):
            if lim.unlimited:
                if len(limits) > 1:
                    raise _error(self.doc,
                        "an unlimited rate limit cannot be combined with other limits", where
                    )
                continue
            if lim.unit in units:
                raise _error(self.doc,
                    f"duplicate rate limit unit '{lim.unit}' on one descriptor", (*where, "unit")
                )
            units.add(lim.unit)
        return tuple(limits)

    def limit(self, data: Any, path: tuple[str | int, ...]) -> Limit:
        doc = self.doc
        if not isinstance(data, dict):
            raise _error(doc, "config error, a rate limit must be a map", path)
        unlimited = _bool(doc, data, "unlimited", path)
        unit_text = _string(doc, data, "unit", path)
        name = _string(doc, data, "name", path)
        if unlimited:
            if unit_text:
                raise _error(doc,
                    "should not specify rate limit unit when unlimited", (*path, "unit")
                )
        elif unit_text.lower() not in UNIT_SECONDS:
            raise _error(doc, f"invalid rate limit unit '{unit_text}'", (*path, "unit"))
        rpu = data.get("requests_per_unit", 0)
        if rpu is None:
            rpu = 0
        if isinstance(rpu, bool) or not isinstance(rpu, int) or rpu < 0 or rpu > 0xFFFFFFFF:
            raise _error(doc,
                "config error, requests_per_unit must be an integer from 0 to 4294967295",
                (*path, "requests_per_unit"),
            )
        replaces = self.replaces(data.get("replaces"), name, (*path, "replaces"))
        algo_text = _string(doc, data, "algorithm", path) or Algorithm.FIXED_WINDOW.value
        try:
            algorithm = Algorithm(algo_text)
        except ValueError:
            raise _error(doc,
                f"invalid rate limit algorithm '{algo_text}' (fixed_window or sliding_window)",
                (*path, "algorithm"),
            ) from None
        return Limit(
            unit=unit_text.lower(),
            requests_per_unit=rpu,
            name=name,
            unlimited=unlimited,
            replaces=replaces,
            algorithm=algorithm,
        )

    def replaces(self, items: Any, own: str, path: tuple[str | int, ...]) -> tuple[str, ...]:
        if items is None:
            return ()
        if not isinstance(items, list):
            raise _error(self.doc, "config error, 'replaces' must be a list", path)
        names = []
        for index, item in enumerate(items):
            name = _string(self.doc, item, "name", (*path, index))
            if not name:
                raise _error(self.doc, "should not have an empty replaces entry", (*path, index))
            if name == own:
                raise _error(self.doc,
                    "replaces should not contain name of same descriptor", (*path, index, "name")
                )
            names.append(name)
        return tuple(names)


def _table(nodes: Sequence[DescriptorNode]) -> dict[str, KeyEntry]:
    """The lookup table of one level: per key, exact values, wildcards in order, bare key."""
    exact: dict[str, dict[str, DescriptorNode]] = {}
    wild: dict[str, list[tuple[re.Pattern[str], DescriptorNode]]] = {}
    default: dict[str, DescriptorNode] = {}
    order: list[str] = []
    for node in nodes:
        if node.key not in order:
            order.append(node.key)
        if node.value is None:
            default[node.key] = node
        elif "*" in node.value:
            wild.setdefault(node.key, []).append((_wildcard(node.value), node))
        else:
            exact.setdefault(node.key, {})[node.value] = node
    return {
        key: KeyEntry(
            exact=exact.get(key, {}),
            wildcards=tuple(wild.get(key, ())),
            default=default.get(key),
        )
        for key in order
    }


def _merge_domain(first: Domain, more: Domain, doc: SourceDoc) -> Domain:
    """MERGE_DOMAIN_CONFIG: ``more``'s top-level descriptors added to ``first``'s.

    As in the reference, a top-level ``key``/``key_value`` both files define is an error named
    after the later file; deeper levels belong to one top-level descriptor, so cannot clash.
    """
    seen = {n.stats_parts[0] for n in first.ordered}
    for index, node in enumerate(more.ordered):
        if node.stats_parts[0] in seen:
            raise _error(doc,
                f"duplicate descriptor composite key '{first.name}.{node.stats_parts[0]}'",
                ("descriptors", index),
            )
    ordered = (*first.ordered, *more.ordered)
    return Domain(name=first.name, root=_table(ordered), ordered=ordered, file=first.file)


def _compile_domain(doc: SourceDoc) -> Domain:
    data = doc.data
    if not isinstance(data, dict):
        raise _error(doc, "config error, a config file must be a map with 'domain'")
    _check_keys(doc, data, ())
    name = _string(doc, data, "domain", ())
    if not name:
        raise _error(doc, "config file cannot have empty domain", ("domain",))
    builder = _DomainBuilder(doc, name)
    root, ordered = builder.level(data.get("descriptors"), ("descriptors",), ())
    return Domain(name=name, root=root, ordered=ordered, file=doc.file)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """``foo*bar`` -> a regex where each ``*`` matches any run of characters (even none)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)
