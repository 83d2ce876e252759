"""Every Envoy config we ship passes ``envoy --mode validate``, and the domain cores stay pure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from envoy_mixer.dev import procs

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    p for pattern in ("envoy-configs/**/*.yaml", "compose/envoy/*.yaml")
    for p in REPO.glob(pattern)
)


def test_some_configs_are_shipped() -> None:
    """The repository ships Envoy configs (guards against an empty parametrization)."""
    assert SHIPPED, "no Envoy configs found under envoy-configs/"


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_envoy_validates(config: Path) -> None:
    """Envoy 1.40 accepts the config in validate mode."""
    result = procs.validate_envoy_config(config)
    assert result.returncode == 0, result.stdout + result.stderr


#: Modules allowed to talk gRPC/protobuf: the thin servicers, wiring (app.py), entry points.
_EDGE_MODULES = {"server.py", "servicer.py", "app.py", "cli.py", "__main__.py"}
_FORBIDDEN = ("grpc", "envoy", "google.rpc", "google.protobuf", "xds", "udpa")


def _domain_modules() -> list[Path]:
    out = []
    for package in ("ratelimit", "extauthz", "telemetry"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name not in _EDGE_MODULES:
                out.append(path)
    return out


# Imports are read with a regex rather than ``ast``: CPython 3.11.7's ``ast.parse`` can raise
# "AST constructor recursion depth mismatch" (a SystemError, fixed in later 3.11 releases) when
# it runs late in a long test session; a line scan sees every import statement just as well.
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import\b.*|import[ \t]+([\w., \t]+?))[ \t]*(?:#.*)?$",
    re.MULTILINE,
)


def _imports(source: str) -> list[str]:
    names: list[str] = []
    for match in _IMPORT.finditer(source):
        if match.group(1) is not None:
            if not match.group(1).startswith("."):  # relative imports stay in the package
                names.append(match.group(1))
        else:
            names += [part.split(" as ")[0].strip() for part in match.group(2).split(",")]
    return names


def test_import_scan_sees_every_form() -> None:
    """The import scan finds plain, dotted, aliased, multi-name and from-imports."""
    source = ("import grpc\nimport os, envoy.service.x as y\n    from google.rpc import code\n"
              "from . import sibling\nfrom xds.a import (\n    b,\n)\n")
    assert _imports(source) == ["grpc", "os", "envoy.service.x", "google.rpc", "xds.a"]


@pytest.mark.parametrize("module", _domain_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_domain_core_imports_no_grpc_or_envoy(module: Path) -> None:
    """Domain modules import neither grpc nor Envoy/protobuf stubs (house rule 2)."""
    imported = _imports(module.read_text())
    bad = [name for name in imported
           if any(name == f or name.startswith(f + ".") for f in _FORBIDDEN)]
    assert not bad, f"{module.name} imports {bad}"
