"""``make bench``: run every service's benchmark and print its tables.

Each ``bench/<name>_bench.py`` module exposes ``main()``. Pass names to run a subset:
``python -m bench ratelimit authz``.
"""

from __future__ import annotations

import importlib
import sys
import time

SUITES = ("ratelimit", "authz", "telemetry", "cli", "xds", "up")


def main(argv: list[str]) -> int:
    """Run the chosen suites (all by default) one after another."""
    chosen = argv or list(SUITES)
    failed = []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}_bench")
            module.main()
        except Exception as exc:  # a failing suite must not hide the others' tables
            failed.append(name)
            print(f"{name} benchmark failed: {exc!r}", flush=True)
        print(f"({name}: {time.monotonic() - started:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
