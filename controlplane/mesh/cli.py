"""``mixer analyze DIR``: load a mesh directory and report what Istio's analyzers would.

One line per finding, like ``istioctl analyze``::

    Error [IST0101] (VirtualService default/reviews vs.yaml:12) Referenced host not found: "ratings"

``--json`` prints ``{"findings": [...]}`` instead (or ``{"load_errors": [...]}``). The exit
code is 1 when the files do not load (each error printed as ``file:line field: message``) or
any finding is an error, 0 otherwise (warnings alone do not fail).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from controlplane.mesh.analyze import analyze, has_errors
from controlplane.mesh.loader import load_mesh
from envoy_mixer.common.errors import ConfigError, ConfigErrors


def _where(err: ConfigError) -> str:
    place = err.file or "?"
    if err.line is not None:
        place += f":{err.line}"
    return f"{place} {err.field}:" if err.field else f"{place}:"


def analyze_path(path: Path, *, as_json: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    """Load and analyze ``path``, print the result; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        mesh = load_mesh(path)
    except ConfigError as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        if as_json:
            print(json.dumps({"load_errors": [e.to_dict() for e in errors]}, indent=2), file=out)
        else:
            for e in errors:
                print(f"{_where(e)} {e.message}", file=err)
        return 1
    findings = analyze(mesh)
    if as_json:
        print(json.dumps({"findings": [f.to_dict() for f in findings]}, indent=2), file=out)
    elif findings:
        for finding in findings:
            print(finding, file=out)
    else:
        print(f"No validation issues found when analyzing {path}.", file=out)
    return 1 if has_errors(findings) else 0


def register(subparsers: Any) -> None:
    """Add ``mixer analyze``."""
    p = subparsers.add_parser(
        "analyze", help="validate a mesh directory of Istio files and analyze it across files",
        description="Load every Istio resource (and ratelimit/telemetry file) in DIR, then "
                    "report Istio-analyzer findings; exit 1 on a load error or an "
                    "error-level finding.",
    )
    p.add_argument("path", type=Path, metavar="DIR", help="mesh directory (or one file)")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``mixer analyze``."""
    return analyze_path(args.path, as_json=args.json)
