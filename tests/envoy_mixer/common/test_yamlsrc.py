"""YAML loading with line numbers and precise config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.yamlsrc import (
    config_files,
    field_name,
    load_documents,
    load_file,
    pydantic_errors,
)


def test_lines_are_recorded_for_nested_paths() -> None:
    """Every mapping value and list item knows the line it came from."""
    doc = load_documents("a:\n  b:\n    - x: 1\n      y: foo\n", "f.yaml")[0]
    assert doc.data == {"a": {"b": [{"x": 1, "y": "foo"}]}}
    assert doc.line_of(("a", "b", 0, "y")) == 4
    assert doc.line_of(("a", "b", 0, "missing")) == 3  # falls back to the nearest ancestor


def test_error_text_names_file_line_and_field() -> None:
    """ConfigError text starts with the file name, then says line and field."""
    doc = load_documents("a:\n  b: 1\n", "limits.yaml")[0]
    err = doc.error("bad value", ("a", "b"))
    assert str(err) == "limits.yaml: bad value (line 2, field a.b)"
    assert err.to_dict() == {"file": "limits.yaml", "line": 2, "field": "a.b",
                             "message": "bad value"}


def test_unknown_key_error_points_at_the_key_line() -> None:
    """A key whose value is a block is reported on the key's own line."""
    doc = load_documents("a:\n  extra:\n    - 1\n", "k.yaml")[0]
    assert doc.line_of(("a", "extra")) == 3
    assert doc.key_line_of(("a", "extra")) == 2
    assert str(doc.error("unknown key 'extra'", ("a", "extra"), at_key=True)) == (
        "k.yaml: unknown key 'extra' (line 2, field a.extra)"
    )


def test_field_name_renders_indexes() -> None:
    """Paths render the way users write them."""
    assert field_name(("spec", "rules", 0, "from", 1)) == "spec.rules[0].from[1]"


def test_syntax_error_has_line() -> None:
    """Broken YAML is a ConfigError naming the line."""
    with pytest.raises(ConfigError) as info:
        load_documents("a: [1, 2\nb: 3\n", "x.yaml")
    assert info.value.file == "x.yaml"
    assert info.value.line == 2
    assert str(info.value).startswith("x.yaml: invalid YAML")


def test_duplicate_keys_are_rejected() -> None:
    """A key given twice is an error rather than a silent override."""
    with pytest.raises(ConfigError, match=r"duplicate key 'a' \(line 2, field a\)"):
        load_documents("a: 1\na: 2\n", "d.yaml")


def test_multiple_documents_skip_empty_ones() -> None:
    """Several documents load in order; empty ones are ignored."""
    docs = load_documents("---\na: 1\n---\n---\nb: 2\n", "m.yaml")
    assert [d.data for d in docs] == [{"a": 1}, {"b": 2}]


def test_directory_lists_yaml_files_in_order(tmp_path: Path) -> None:
    """A directory PATH means its visible *.yaml/*.yml files, sorted by name."""
    for name in ("b.yaml", "a.yml", ".hidden.yaml", "notes.txt"):
        (tmp_path / name).write_text("a: 1\n")
    assert [p.name for p in config_files(tmp_path)] == ["a.yml", "b.yaml"]


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    """A PATH that does not exist is reported, not a traceback."""
    with pytest.raises(ConfigError, match="no such file or directory"):
        config_files(tmp_path / "nope.yaml")


def test_unreadable_encoding_is_reported(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError naming it."""
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin.yaml: file is not valid UTF-8"):
        load_file(bad)


class _Limit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit: str
    requests_per_unit: int


def test_pydantic_errors_map_to_lines() -> None:
    """Pydantic's error locations become file, line and field."""
    doc = load_documents("limit:\n  unit: second\n  requests_per_unit: many\n  extra: 1\n",
                         "l.yaml")[0]
    with pytest.raises(ValidationError) as info:
        _Limit.model_validate(doc.data["limit"])
    err = pydantic_errors(doc, info.value, base=("limit",))
    assert isinstance(err, ConfigErrors)
    texts = [str(e) for e in err.errors]
    assert any(t.endswith("(line 3, field limit.requests_per_unit)") for t in texts)
    assert "l.yaml: unknown key 'extra' (line 4, field limit.extra)" in texts


def test_lines_of_a_later_document_are_found_on_demand() -> None:
    """Line tables of any document of a stream are complete when an error asks for them."""
    docs = load_documents("a: 1\n---\nb:\n  c:\n    - d: 2\n", "s.yaml")
    assert docs[1].line_of(()) == 3
    assert docs[1].line_of(("b", "c", 0, "d")) == 5
    assert docs[1].key_line_of(("b", "c")) == 4


def test_stream_yields_documents_before_a_later_syntax_error() -> None:
    """Streaming hands out the good documents, then raises the same error load_documents does."""
    from envoy_mixer.common.yamlsrc import stream_documents

    stream = stream_documents("a: 1\n---\nb: [1\n", "s.yaml")
    assert next(stream).data == {"a": 1}
    with pytest.raises(ConfigError) as info:
        next(stream)
    with pytest.raises(ConfigError) as whole:
        load_documents("a: 1\n---\nb: [1\n", "s.yaml")
    assert str(info.value) == str(whole.value)


def test_paused_gc_nests_and_restores_the_collector() -> None:
    """The collector is off inside (nested) pauses and back on only after the outermost."""
    import gc

    from envoy_mixer.common.yamlsrc import paused_gc

    assert gc.isenabled()
    with paused_gc():
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resources_unwrap_a_kubernetes_list() -> None:
    """`kind: List` yields each item with its items[i] path; any other document is one resource."""
    from envoy_mixer.common.yamlsrc import load_documents, resources

    listed, single = load_documents(
        "kind: List\nitems:\n- {kind: A}\n- {kind: B}\n---\nkind: C\n", "f.yaml")
    assert [(path, item["kind"]) for path, item in resources(listed)] == [
        (("items", 0), "A"), (("items", 1), "B")]
    assert [(path, item["kind"]) for path, item in resources(single)] == [((), "C")]


def test_read_documents_reports_every_bad_file(tmp_path: Path) -> None:
    """A directory with two bad files fails once, naming both; a good one gives its documents."""
    from envoy_mixer.common.errors import ConfigErrors
    from envoy_mixer.common.yamlsrc import read_documents

    (tmp_path / "a.yaml").write_text("a: [1\n")
    (tmp_path / "b.yaml").write_text("b: {\n")
    with pytest.raises(ConfigErrors) as info:
        read_documents(tmp_path)
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)
    good = tmp_path / "good"
    good.mkdir()
    (good / "c.yaml").write_text("c: 1\n---\nd: 2\n")
    assert [doc.data for doc in read_documents(good)] == [{"c": 1}, {"d": 2}]

