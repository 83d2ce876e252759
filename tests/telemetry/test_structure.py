"""Package structure rules and the CLI surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "telemetry"
DOMAIN = ("config", "entries", "identity", "labels", "recorder", "graph", "accesslog",
          "pipeline", "errors")


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_core_imports_neither_grpc_nor_envoy(module: str) -> None:
    """The domain modules never import grpc or envoy.* (only server.py maps protobuf)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("grpc", "envoy", "google")]


def test_mixer_telemetry_help_lists_the_issue_flags() -> None:
    """`mixer telemetry --help` offers --config, --listen and --admin."""
    from envoy_mixer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["telemetry", "--config", "x.yaml", "--listen", "127.0.0.1:1",
                              "--admin", "127.0.0.1:2"])
    assert (str(args.config), args.listen, args.admin) == ("x.yaml", "127.0.0.1:1", "127.0.0.1:2")
    defaults = parser.parse_args(["telemetry"])
    assert (defaults.listen, defaults.admin, defaults.config) == (
        "127.0.0.1:9401", "127.0.0.1:9402", None)


def test_python_m_telemetry_help() -> None:
    """`python -m telemetry --help` works standalone."""
    out = subprocess.run([sys.executable, "-m", "telemetry", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--config" in out and "--listen" in out and "--admin" in out
