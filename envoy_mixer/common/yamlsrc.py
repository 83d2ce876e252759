"""YAML loading that remembers where every value came from.

Config errors must name the file, the line and the field. PyYAML's composer keeps a start
mark on every node, so we build plain Python values from the node tree ourselves and keep a
side table ``path -> line``. A path is a tuple of mapping keys and sequence indexes, e.g.
``("descriptors", 0, "rate_limit", "unit")``; ``field_name`` renders it as
``descriptors[0].rate_limit.unit``.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from envoy_mixer.common.errors import ConfigError, ConfigErrors

PathKey = tuple[str | int, ...]

_CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class SourceDoc:
    """One YAML document: its plain value plus the line of every path inside it.

    The line tables are filled on first need (``locate``): a config file is read far more often
    than it is wrong, and a table entry per value of a 10,000-rule file would cost more time
    and memory than everything else the load does. ``lines`` starts with the document's own
    line, which is all a good load asks for.
    """

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)
    index: int = 0
    #: The line of each mapping key (``lines`` has the line of its value, which differs for
    #: block values): "unknown key" errors point here.
    key_lines: dict[PathKey, int] = field(default_factory=dict)
    #: Rebuilds this document's node tree when a line deeper than the root is asked for.
    locate: Callable[[], yaml.Node] | None = field(default=None, repr=False, compare=False)

    def _complete(self) -> None:
        locate = self.locate
        if locate is None:
            return
        object.__setattr__(self, "locate", None)
        _record_lines(locate(), (), self.lines, self.key_lines)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        if key and key not in self.lines:
            self._complete()
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def key_line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of the key that ends ``path`` (falls back to ``line_of``)."""
        self._complete()
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


#: libyaml's parser and composer when PyYAML was built with it (several times faster on large
#: files); the pure-Python ones otherwise. Both produce the same nodes and marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Scalar constructors by resolved tag (int, bool, null, float, str, timestamp...): these keep
#: no state, so one constructor serves every scalar instead of a loader per value.
_SCALARS = yaml.constructor.SafeConstructor()
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _scalar(node: yaml.Node) -> Any:
    make = yaml.constructor.SafeConstructor.yaml_constructors.get(node.tag)
    if make is None:  # an unknown tag: the full constructor raises its usual error
        return yaml.SafeLoader("").construct_object(node, deep=True)
    return make(_SCALARS, node)


def _build(node: yaml.Node, path: PathKey, file: str) -> Any:
    """The plain value of ``node``; paths are only built for error messages."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise ConfigError(
                    "YAML merge keys (<<) are not supported",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(path) or None,
                )
            key = _build(key_node, path, file) if not isinstance(key_node, yaml.ScalarNode) \
                else _scalar(key_node)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(
                    "mapping keys must be scalars",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(path) or None,
                )
            if key in result:
                child = (*path, key if isinstance(key, (str, int)) else str(key))
                raise ConfigError(
                    f"duplicate key '{key}'",
                    file=file, line=key_node.start_mark.line + 1, field=field_name(child),
                )
            if isinstance(value_node, yaml.ScalarNode):
                result[key] = _scalar(value_node)
            else:
                result[key] = _build(
                    value_node, (*path, key if isinstance(key, (str, int)) else str(key)), file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _scalar(item) if isinstance(item, yaml.ScalarNode) else _build(item, (*path, i), file)
            for i, item in enumerate(node.value)
        ]
    # Scalars: the safe constructors resolve ints, bools, nulls, floats and strings.
    return _scalar(node)


def _record_lines(node: yaml.Node, path: PathKey, lines: dict[PathKey, int],
                  key_lines: dict[PathKey, int]) -> None:
    """Fill the line tables of a document already built by ``_build`` (so it is valid)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            child = (*path, key if isinstance(key, (str, int)) else str(key))
            key_lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines, key_lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*path, i), lines, key_lines)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Suspend the cyclic garbage collector while a large config is built.

    Building a config allocates hundreds of thousands of objects and frees almost none, which
    is the worst case for the generational collector: it re-scans the growing heap over and
    over (measured: two thirds of a 10,000-rule load). Reference counting still frees
    everything acyclic meanwhile; the collector resumes (if it was on) when the outermost
    pause ends, even across threads.
    """
    global _pauses, _was_enabled
    with _gc_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


_gc_lock = threading.Lock()
_pauses = 0
_was_enabled = True


def _compose(text: str, file: str) -> Iterator[yaml.Node | None]:
    """The documents' node trees one at a time (only one tree is alive at once)."""
    try:
        try:
            yield from yaml.compose_all(text, Loader=_Loader)
        except yaml.YAMLError:
            if _Loader is yaml.SafeLoader:
                raise
            # libyaml words its errors differently: the pure-Python parser finds the same
            # error and says it the way our messages (and users' scripts) expect.
            for _ in yaml.compose_all(text, Loader=yaml.SafeLoader):
                pass
            raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", file=file, line=line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc


def stream_documents(text: str, file: str) -> Iterator[SourceDoc]:
    """The documents of a YAML stream one at a time, so a caller that turns each into its own
    model never holds every document's values at once; empty documents are skipped.

    A syntax error raises when the stream reaches it (after the documents before it).
    """
    for index, node in enumerate(_compose(text, file)):
        if node is None:
            continue
        data = _build(node, (), file)
        if data is None:
            continue
        yield SourceDoc(file=file, data=data, lines={(): node.start_mark.line + 1}, index=index,
                        locate=_locator(text, file, index))


def load_documents(text: str, file: str) -> list[SourceDoc]:
    """Parse every document of a YAML stream; empty documents are skipped.

    A syntax error anywhere fails the whole stream, before any document is returned.
    """
    with paused_gc():
        return list(stream_documents(text, file))


def _locator(text: str, file: str, index: int) -> Callable[[], yaml.Node]:
    def locate() -> yaml.Node:
        for at, node in enumerate(_compose(text, file)):
            if at == index and node is not None:
                return node
        raise AssertionError("the same text composed to this document before")
    return locate


def _read(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", file=name) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("file is not valid UTF-8", file=name) from exc


def load_file(path: Path, display_name: str | None = None) -> list[SourceDoc]:
    """Read and parse one YAML file; errors carry ``display_name`` (default: the file name)."""
    name = display_name or path.name
    return load_documents(_read(path, name), name)


def stream_file(path: Path, display_name: str | None = None) -> Iterator[SourceDoc]:
    """``load_file`` one document at a time (see ``stream_documents``)."""
    name = display_name or path.name
    yield from stream_documents(_read(path, name), name)


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


def read_documents(path: Path) -> list[SourceDoc]:
    """Every YAML document under a file or directory, reading every file before failing.

    A directory with several bad files reports all of them at once (``ConfigErrors``), each
    with its file and line; one bad file raises its ``ConfigError`` as is.
    """
    docs: list[SourceDoc] = []
    errors: list[ConfigError] = []
    for file in config_files(Path(path)):
        try:
            docs.extend(load_file(file))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return docs


def resources(doc: SourceDoc) -> Iterator[tuple[PathKey, Any]]:
    """The resources of one document, each with its path in the document.

    A Kubernetes ``kind: List`` (what ``kubectl get -o yaml`` exports) holds its resources under
    ``items``; any other document is one resource at the root. Errors then name the field as
    ``items[2].spec...``, so a user finds it in the file as written.
    """
    data = doc.data
    if (isinstance(data, dict) and data.get("kind") == "List"
            and isinstance(data.get("items"), list)):
        for i, item in enumerate(data["items"]):
            yield ("items", i), item
    else:
        yield (), data


def pydantic_errors(doc: SourceDoc, exc: Any, base: Sequence[str | int] = ()) -> ConfigError:
    """Turn a ``pydantic.ValidationError`` into one ConfigError naming file, line and field."""
    errors = []
    for err in exc.errors():
        loc = tuple(base) + tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            errors.append(doc.error(f"unknown key '{loc[-1]}'", loc, at_key=True))
            continue
        message = f"missing required key '{loc[-1]}'" if kind == "missing" else str(err["msg"])
        if kind == "value_error":
            # Our validators' own text, without the prefix pydantic puts before it.
            message = message.removeprefix("Value error, ")
        errors.append(doc.error(message, loc))
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)
