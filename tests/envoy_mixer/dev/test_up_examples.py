"""Which example files `mixer up` serves: --examples, ./examples, else a packaged copy."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import pytest

from envoy_mixer.dev.up import EXAMPLE_FILES, UpError, find_examples, user_examples_dir

PACKAGED = resources.files("envoy_mixer.dev") / "examples"


def _fill(directory: Path) -> Path:
    (directory / "mesh").mkdir(parents=True)
    for name in EXAMPLE_FILES.values():
        (directory / name).write_text(f"# mine: {name}\n")
    (directory / "mesh" / "workloads.yaml").write_text("# mine\n")
    return directory


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_CONFIG_HOME and an empty working directory (no ./examples)."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return home


def test_without_a_checkout_the_packaged_examples_are_copied_and_announced(
    config_home: Path,
) -> None:
    """Outside a checkout, up copies the packaged examples (the demo mesh too) to the user config
    dir and says so."""
    out = io.StringIO()
    found = find_examples(None, out=out)
    assert found == config_home / "envoy-mixer" / "examples"
    mesh = sorted(f"mesh/{p.name}" for p in (PACKAGED / "mesh").iterdir()
                  if p.name.endswith(".yaml"))
    for name in [*EXAMPLE_FILES.values(), *mesh]:
        assert (found / name).read_bytes() == (PACKAGED / name).read_bytes()
    assert out.getvalue() == (
        "copied the example files (policy.yaml, ratelimit.yaml, telemetry.yaml, "
        f"peer-authentication.yaml, {', '.join(mesh)}) to "
        f"{found}: edit them there, they hot-reload\n")


def test_an_existing_copy_is_never_overwritten(config_home: Path) -> None:
    """A second run keeps the user's edits and only restores a file that was deleted."""
    target = find_examples(None)
    (target / "policy.yaml").write_text("# my edit\n")
    (target / "telemetry.yaml").unlink()
    out = io.StringIO()
    assert find_examples(None, out=out) == target
    assert (target / "policy.yaml").read_text() == "# my edit\n"
    assert (target / "telemetry.yaml").read_bytes() == (PACKAGED / "telemetry.yaml").read_bytes()
    assert "copied the example files (telemetry.yaml)" in out.getvalue()

    out = io.StringIO()
    find_examples(None, out=out)
    assert out.getvalue() == f"using the example files in {target}\n"


def test_examples_in_the_working_directory_win(config_home: Path) -> None:
    """In a checkout (./examples holds mesh/) that one is used and nothing is copied."""
    local = _fill(Path.cwd() / "examples")
    out = io.StringIO()
    assert find_examples(None, out=out) == local
    assert out.getvalue() == "" and not config_home.exists()


def test_an_incomplete_working_directory_copy_falls_back_to_the_packaged_one(
    config_home: Path,
) -> None:
    """An unrelated ./examples without a mesh/ is not mistaken for ours."""
    (Path.cwd() / "examples").mkdir()
    (Path.cwd() / "examples" / "policy.yaml").write_text("# someone else's\n")
    assert find_examples(None) == config_home / "envoy-mixer" / "examples"


def test_explicit_directory_is_used_as_is(tmp_path: Path, config_home: Path) -> None:
    """--examples DIR is used when complete and is an error, not a fallback, when not."""
    mine = _fill(tmp_path / "mine")
    assert find_examples(mine) == mine
    (mine / "mesh" / "workloads.yaml").unlink()
    with pytest.raises(UpError, match=r"no demo mesh \(mesh/\*.yaml\) in .*mine; pass --examples"):
        find_examples(mine)
    assert not config_home.exists()


def test_an_uncreatable_copy_is_a_clear_error(tmp_path: Path, config_home: Path) -> None:
    """A target that cannot be created is an UpError naming it, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UpError, match=r"cannot copy the example files to .*file/examples"):
        find_examples(None, user_dir=blocker / "examples")


def test_user_examples_dir_defaults_to_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without XDG_CONFIG_HOME the copy goes to ~/.config/envoy-mixer/examples."""
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_examples_dir() == tmp_path / ".config" / "envoy-mixer" / "examples"
