"""mixer analyze DIR: findings one per line, --json, exit 1 on an error or a load error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controlplane.mesh.cli import analyze_path
from envoy_mixer.cli import build_parser, main

TESTDATA = Path(__file__).parent / "testdata"


def _run(path: Path, as_json: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = analyze_path(path, as_json=as_json, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_clean_mesh_exits_0() -> None:
    """A mesh without findings says so and exits 0."""
    code, out, err = _run(TESTDATA / "demo")
    assert (code, err) == (0, "")
    assert out == f"No validation issues found when analyzing {TESTDATA / 'demo'}.\n"


def test_error_finding_exits_1() -> None:
    """An error-level finding is printed istioctl-style and the exit code is 1."""
    code, out, _ = _run(TESTDATA / "analyze" / "unknown_host.yaml")
    assert code == 1
    assert out == ('Error [IST0101] (VirtualService default/reviews unknown_host.yaml:26) '
                   'Referenced host not found: "ratings"\n')


def test_warnings_only_exit_0() -> None:
    """Warnings are printed but do not fail the run."""
    code, out, _ = _run(TESTDATA / "analyze" / "policy_selects_nothing.yaml")
    assert code == 0
    assert out.startswith("Warning [IST0127] (AuthorizationPolicy default/ratings-deny ")


def test_json_output() -> None:
    """--json prints the findings as a JSON document."""
    code, out, _ = _run(TESTDATA / "analyze" / "unknown_host.yaml", as_json=True)
    assert code == 1
    [finding] = json.loads(out)["findings"]
    assert (finding["code"], finding["file"], finding["line"]) == (
        "IST0101", "unknown_host.yaml", 26)


def test_load_error_prints_file_line_field_and_exits_1() -> None:
    """A file that does not load is reported as file:line field: message, exit 1."""
    code, out, err = _run(TESTDATA / "errors" / "not_supported_field.yaml")
    assert (code, out) == (1, "")
    assert err == ("not_supported_field.yaml:12 spec.http[0].corsPolicy: "
                   "not supported: corsPolicy\n")


def test_load_error_as_json() -> None:
    """--json reports load errors as data too."""
    code, out, _ = _run(TESTDATA / "errors" / "se_duplicate_port.yaml", as_json=True)
    assert code == 1
    assert json.loads(out) == {"load_errors": [{
        "file": "se_duplicate_port.yaml", "line": 10, "field": "spec.ports[1].number",
        "message": "duplicate port number 8080"}]}


def test_mixer_analyze_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    """`mixer analyze` is a subcommand of the mixer CLI."""
    args = build_parser().parse_args(["analyze", str(TESTDATA / "demo"), "--json"])
    assert args.json is True
    assert main(["analyze", str(TESTDATA / "demo")]) == 0
    assert capsys.readouterr().out.startswith("No validation issues found")
