"""The mesh model is pure: no gRPC, no Envoy protos anywhere in controlplane/mesh."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "controlplane" / "mesh"
_FORBIDDEN = ("grpc", "envoy", "google.rpc", "google.protobuf", "xds", "udpa")
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.MULTILINE)


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_grpc_or_envoy_imports(module: Path) -> None:
    """A mesh module imports neither grpc nor any Envoy/xDS protobuf package."""
    names = [a or b for a, b in _IMPORT.findall(module.read_text())]
    assert not [n for n in names if any(n == f or n.startswith(f + ".") for f in _FORBIDDEN)]
