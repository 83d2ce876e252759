"""What an installed envoy-mixer carries: the example files, one version number."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import envoy_mixer
from envoy_mixer.dev.up import EXAMPLE_FILES

REPO = Path(__file__).resolve().parents[3]


def test_top_level_examples_are_the_packaged_ones() -> None:
    """examples/ (what users of a checkout edit) is byte for byte envoy_mixer/dev/examples/."""
    packaged = resources.files("envoy_mixer.dev") / "examples"
    names = sorted(p.name for p in packaged.iterdir() if p.name.endswith(".yaml"))
    assert names == sorted(EXAMPLE_FILES.values())
    assert sorted(p.name for p in (REPO / "examples").iterdir() if p.is_file()) == names
    for name in names:
        assert (REPO / "examples" / name).read_bytes() == (packaged / name).read_bytes(), (
            f"examples/{name} differs from envoy_mixer/dev/examples/{name}: change both")


def test_the_demo_mesh_is_packaged_too() -> None:
    """examples/mesh/ (the demo mesh `mixer up` serves) is byte for byte the packaged one."""
    packaged = resources.files("envoy_mixer.dev") / "examples" / "mesh"
    names = sorted(p.name for p in packaged.iterdir() if p.name.endswith(".yaml"))
    assert "workloads.yaml" in names and "peer-authentication.yaml" in names
    assert sorted(p.name for p in (REPO / "examples" / "mesh").iterdir()) == names
    for name in names:
        assert (REPO / "examples" / "mesh" / name).read_bytes() == (
            packaged / name).read_bytes(), (
            f"examples/mesh/{name} differs from envoy_mixer/dev/examples/mesh/{name}: change both")


def test_packaged_examples_are_declared_package_data() -> None:
    """pyproject ships envoy_mixer/dev/examples/*.yaml and examples/mesh/*.yaml in the wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["envoy_mixer.dev"]
    assert "examples/*.yaml" in data and "examples/mesh/*.yaml" in data


def test_package_version_matches_pyproject() -> None:
    """envoy_mixer.__version__ (what `mixer --version` prints) is the version pyproject builds."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert envoy_mixer.__version__ == config["project"]["version"]
