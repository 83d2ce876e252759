"""``mixer check PATH...``: validate any of our config files, detecting what kind each is.

Kind detection, per file:

- a document with ``apiVersion: security.istio.io/...`` → authorization policies
  (``extauthz.policy.load_policies``);
- a document with a top-level ``domain:`` → rate limits (``ratelimit.config.load_config``);
- anything else → telemetry config (``telemetry.config.load_config``).

Each file prints ``OK <file> (<kind>)`` or the loader's precise error (file, line, field);
the exit code is 1 if any file failed. A directory checks every ``*.yaml``/``*.yml`` in it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from envoy_mixer.errors import ConfigError, ConfigErrors
from envoy_mixer.yamlsrc import config_files, load_file

KINDS = ("authz", "ratelimit", "telemetry")


def detect_kind(path: Path) -> str:
    """``authz``, ``ratelimit`` or ``telemetry`` for one file (ConfigError on bad YAML)."""
    docs = load_file(path)
    for doc in docs:
        if isinstance(doc.data, dict):
            api = doc.data.get("apiVersion")
            if isinstance(api, str) and api.startswith("security.istio.io"):
                return "authz"
    for doc in docs:
        if isinstance(doc.data, dict) and "domain" in doc.data:
            return "ratelimit"
    return "telemetry"


def _loader(kind: str) -> Callable[[Path], Any]:
    if kind == "authz":
        from extauthz.policy import load_policies

        return load_policies
    if kind == "ratelimit":
        from ratelimit.config import load_config as load_limits

        return load_limits
    from telemetry.config import load_config as load_telemetry

    return load_telemetry


def check_file(path: Path, kind: str | None = None) -> tuple[str, list[str]]:
    """Validate one file: its kind and the error lines (empty when it is valid)."""
    found = kind or "yaml"
    try:
        found = kind or detect_kind(path)
        _loader(found)(path)
    except ConfigErrors as exc:
        return found, [ConfigError.__str__(e) for e in exc.errors]
    except ConfigError as exc:
        return found, [str(exc)]
    return found, []


def check_paths(paths: Sequence[Path], kind: str | None = None,
                out: Any = None, err: Any = None) -> int:
    """Check every file under ``paths``, print the results; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    failed = 0
    for root in paths:
        try:
            files = config_files(root)
        except (ConfigError, OSError) as exc:
            print(f"ERROR {root}: {exc}", file=err)
            failed += 1
            continue
        if not files:
            print(f"ERROR {root}: no *.yaml or *.yml files", file=err)
            failed += 1
        for file in files:
            found, errors = check_file(file, kind)
            if errors:
                failed += 1
                print(f"FAIL {file} ({found})", file=err)
                for line in errors:
                    print(f"  {line}", file=err)
            else:
                print(f"OK {file} ({found})", file=out)
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``mixer check``."""
    p = subparsers.add_parser(
        "check", help="validate policy, rate-limit and telemetry config files",
        description="Validate config files (kind detected per file); non-zero exit on error.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or directory")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="skip detection and check every file as this kind")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``mixer check``."""
    return check_paths(args.paths, args.kind)
