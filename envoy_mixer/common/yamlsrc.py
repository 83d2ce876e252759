"""YAML loading that remembers where every value came from.

Config errors must name the file, the line and the field. PyYAML's composer keeps a start
mark on every node, so we build plain Python values from the node tree ourselves and keep a
side table ``path -> line``. A path is a tuple of mapping keys and sequence indexes, e.g.
``("descriptors", 0, "rate_limit", "unit")``; ``field_name`` renders it as
``descriptors[0].rate_limit.unit``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envoy_mixer.common.errors import ConfigError

PathKey = tuple[str | int, ...]

_CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """One YAML document: its plain value plus the line of every path inside it."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    index: int = 0
    #: The line of each mapping key (``lines`` has the line of its value, which differs for
    #: block values): "unknown key" errors point here.
    key_lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def key_line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of the key that ends ``path`` (falls back to ``line_of``)."""
        return self.key_lines.get(tuple(path)) or self.line_of(path)

    def error(
        self, message: str, path: Sequence[str | int] = (), *, at_key: bool = False
    ) -> ConfigError:
        """A ConfigError for ``path``; ``at_key`` points at the key's line, not its value's."""
        line = self.key_line_of(path) if at_key else self.line_of(path)
        return ConfigError(message, file=self.file, line=line, field=field_name(path) or None)


def field_name(path: Sequence[str | int]) -> str:
    """Render a path the way users write it: ``a.b[0].c``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _build(
    node: yaml.Node, path: PathKey, lines: dict[PathKey, int], file: str,
    key_lines: dict[PathKey, int] | None = None,
) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    "YAML merge keys (<<) are not supported",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(path) or None,
                )
            key = _build(key_node, (*path, "<key>"), {}, file, None)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(
                    "mapping keys must be scalars",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(path) or None,
                )
            child = (*path, key if isinstance(key, (str, int)) else str(key))
            if key in result:
                raise ConfigError(
                    f"duplicate key '{key}'",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(child),
                )
            if key_lines is not None:
                key_lines[child] = key_node.start_mark.line + 1
            result[key] = _build(value_node, child, lines, file, key_lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, i), lines, file, key_lines) for i, item in enumerate(node.value)
        ]
    # Scalars: let the safe constructor resolve ints, bools, nulls, floats and strings.
    constructor = yaml.SafeLoader("")
    return constructor.construct_object(node, deep=True)


def load_documents(text: str, file: str) -> list[SourceDoc]:
    """Parse every document of a YAML stream; empty documents are skipped."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    docs = []
    for index, node in enumerate(nodes):
        if node is None:
            continue
        lines: dict[PathKey, int] = {}
        key_lines: dict[PathKey, int] = {}
        data = _build(node, (), lines, file, key_lines)
        if data is None:
            continue
        docs.append(
            SourceDoc(file=file, data=data, lines=lines, index=index, key_lines=key_lines)
        )
    return docs


def load_file(path: Path, display_name: str | None = None) -> list[SourceDoc]:
    """Read and parse one YAML file; errors carry ``display_name`` (default: the file name)."""
    name = display_name or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=name) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not valid UTF-8", file=name) from exc
    return load_documents(text, name)


def config_files(path: Path) -> list[Path]:
    """The YAML files behind a config PATH: the file itself, or a directory's ``*.yaml``/``*.yml``.

    Hidden files (editor swap files, Kubernetes ``..data`` links) are ignored; order is by name
    so loads are deterministic.
    """
    if path.is_dir():
        return sorted(
            p for p in path.iterdir()
            if p.is_file() and p.suffix in _CONFIG_SUFFIXES and not p.name.startswith(".")
        )
    if path.exists():
        return [path]
    raise ConfigError("no such file or directory", file=str(path))


def iter_documents(path: Path) -> Iterator[SourceDoc]:
    """Every YAML document under a config PATH (see ``config_files``)."""
    for file in config_files(path):
        yield from load_file(file)


def pydantic_errors(doc: SourceDoc, exc: Any, base: Sequence[str | int] = ()) -> ConfigError:
    """Turn a ``pydantic.ValidationError`` into one ConfigError naming file, line and field."""
    from envoy_mixer.common.errors import ConfigErrors

    errors = []
    for err in exc.errors():
        loc = tuple(base) + tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            errors.append(doc.error(f"unknown key '{loc[-1]}'", loc, at_key=True))
            continue
        message = f"missing required key '{loc[-1]}'" if kind == "missing" else str(err["msg"])
        errors.append(doc.error(message, loc))
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)
