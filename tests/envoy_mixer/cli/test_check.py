"""``mixer check PATH...``: kind detection, precise errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from envoy_mixer import cli
from envoy_mixer.cli.check import detect_kind

REPO = Path(__file__).resolve().parents[3]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: default}
spec:
  action: ALLOW
  rules:
    - to: [{operation: {paths: ["/api/*"]}}]
"""
LIMITS = """\
domain: d
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
"""


def test_detects_each_kind(tmp_path: Path) -> None:
    """Istio apiVersion -> authz, domain/descriptors -> ratelimit, metrics etc. -> telemetry."""
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "l.yaml").write_text(LIMITS)
    (tmp_path / "e.yaml").write_text("descriptors:\n")
    (tmp_path / "t.yaml").write_text("metrics: {}\n")
    assert detect_kind(tmp_path / "p.yaml") == "authz"
    assert detect_kind(tmp_path / "l.yaml") == "ratelimit"
    assert detect_kind(tmp_path / "e.yaml") == "ratelimit"
    assert detect_kind(tmp_path / "t.yaml") == "telemetry"


@pytest.mark.parametrize("text", ["foo: 1\n", "{}\n", ""])
def test_unknown_kind_says_so_and_points_at_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """A file with no kind's markers is not guessed: the report says so and names --kind."""
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert cli.main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {path} (unknown)" in err
    assert "cannot tell which kind of config this is" in err and "--kind" in err
    assert "telemetry)" not in err.splitlines()[0]


def test_ratelimit_file_with_empty_domain_is_reported_as_ratelimit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A limits file without a domain fails as a ratelimit file with the reference's error."""
    path = tmp_path / "empty_domain.yaml"
    path.write_text("domain: ''\ndescriptors:\n  - key: a\n")
    assert cli.main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {path} (ratelimit)" in err
    assert "empty_domain.yaml: config file cannot have empty domain" in err


def test_directory_is_loaded_as_the_service_loads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same domain in two files of a directory fails, as the service refuses it."""
    (tmp_path / "a.yaml").write_text(LIMITS)
    (tmp_path / "b.yaml").write_text(LIMITS.replace("remote_address", "user"))
    assert cli.main(["check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"OK {tmp_path / 'a.yaml'} (ratelimit)" in captured.out
    assert f"FAIL {tmp_path / 'b.yaml'} (ratelimit)" in captured.err
    assert "b.yaml: duplicate domain 'd' in config file" in captured.err
    # With the service's MERGE_DOMAIN_CONFIG the same directory loads.
    assert cli.main(["check", "--merge-domains", str(tmp_path)]) == 0


def test_mixed_directory_checks_each_kind_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory mixing kinds gets a note, and cross-file errors still count per kind."""
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "l1.yaml").write_text(LIMITS)
    (tmp_path / "l2.yaml").write_text(LIMITS)
    assert cli.main(["check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"NOTE {tmp_path}: holds authz, ratelimit files" in captured.err
    assert f"OK {tmp_path / 'p.yaml'} (authz)" in captured.out
    assert "l2.yaml: duplicate domain 'd' in config file" in captured.err


def test_two_telemetry_files_in_a_directory_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The telemetry service takes one config: a directory with two fails, naming the second."""
    (tmp_path / "a.yaml").write_text("metrics: {}\n")
    (tmp_path / "b.yaml").write_text("metrics: {}\n")
    assert cli.main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {tmp_path / 'b.yaml'} (telemetry)" in err


def test_valid_files_print_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid files (incl. a directory of them) print OK with their kind and exit 0."""
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "l.yaml").write_text(LIMITS)
    assert cli.main(["check", str(tmp_path), str(tmp_path / "l.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"OK {tmp_path / 'p.yaml'} (authz)" in out
    assert f"OK {tmp_path / 'l.yaml'} (ratelimit)" in out


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped policy and limit examples pass `mixer check`."""
    code = cli.main(["check", str(REPO / "examples" / "policy.yaml"),
                     str(REPO / "examples" / "ratelimit.yaml")])
    assert code == 0, capsys.readouterr()


def test_bad_limit_names_file_line_and_field(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid unit fails with the file, line and field, and exit code 1."""
    bad = tmp_path / "limits.yaml"
    bad.write_text(LIMITS.replace("minute", "fortnight"))
    assert cli.main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {bad} (ratelimit)" in err
    assert "limits.yaml: " in err and "fortnight" in err and "line 4" in err


def test_bad_yaml_and_missing_path_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unparsable YAML and a missing path are errors too, while good files still print OK."""
    (tmp_path / "broken.yaml").write_text("domain: [unclosed\n")
    good = tmp_path / "good.yaml"
    good.write_text(LIMITS)
    code = cli.main(["check", str(tmp_path / "broken.yaml"), str(tmp_path / "nope.yaml"),
                     str(good)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"FAIL {tmp_path / 'broken.yaml'} (yaml)" in captured.err
    assert "nope.yaml: no such file or directory" in captured.err
    assert f"OK {good} (ratelimit)" in captured.out


def test_forced_kind_reports_that_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--kind skips detection: a limits file checked as telemetry config fails as telemetry."""
    path = tmp_path / "l.yaml"
    path.write_text(LIMITS)
    assert cli.main(["check", "--kind", "telemetry", str(path)]) == 1
    assert f"FAIL {path} (telemetry)" in capsys.readouterr().err


def test_directory_reports_every_bad_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every bad file of a directory is named: its own errors and each clash with earlier files."""
    (tmp_path / "a.yaml").write_text(LIMITS)
    (tmp_path / "b.yaml").write_text(LIMITS.replace("minute", "fortnight"))
    (tmp_path / "c.yaml").write_text(LIMITS)
    (tmp_path / "d.yaml").write_text(LIMITS)
    assert cli.main(["check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"OK {tmp_path / 'a.yaml'} (ratelimit)" in captured.out
    assert "b.yaml: invalid rate limit unit 'fortnight'" in captured.err
    for name in ("c.yaml", "d.yaml"):
        assert f"{name}: duplicate domain 'd' in config file" in captured.err
