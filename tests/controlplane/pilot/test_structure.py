"""Generation is pure and the protocol core is free of gRPC (STYLE 14): no grpc in
controlplane/pilot, nor in the xDS cache, status and protocol modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3] / "controlplane"
PURE = [*sorted((ROOT / "pilot").rglob("*.py")),
        *(ROOT / "xds" / n for n in ("cache.py", "status.py", "protocol.py", "types.py"))]
_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.MULTILINE)


@pytest.mark.parametrize("module", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_grpc_or_runtime_imports(module: Path) -> None:
    """A pure module imports neither grpc, aiohttp nor the process runtime."""
    names = [a or b for a, b in _IMPORT.findall(module.read_text())]
    assert not [n for n in names if n.split(".")[0] in ("grpc", "aiohttp")
                or n.startswith("envoy_mixer.runtime")]
