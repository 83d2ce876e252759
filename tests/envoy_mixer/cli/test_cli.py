"""The ``mixer`` entry points: ``--version`` and ``python -m envoy_mixer``."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from envoy_mixer import __version__, cli


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`mixer --version` prints the package version and exits 0."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"mixer {__version__}\n"


def test_python_m_envoy_mixer_is_the_mixer_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m envoy_mixer ARGS` runs the same CLI as `mixer ARGS`."""
    monkeypatch.setattr(sys, "argv", ["envoy_mixer", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("envoy_mixer", run_name="__main__", alter_sys=True)
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"mixer {__version__}\n"


@pytest.mark.slow
def test_python_m_envoy_mixer_as_a_process() -> None:
    """A real `python -m envoy_mixer --help` lists the subcommands and exits 0."""
    result = subprocess.run([sys.executable, "-m", "envoy_mixer", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: mixer" in result.stdout and " up " in result.stdout
