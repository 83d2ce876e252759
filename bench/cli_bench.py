"""CLI start-up benchmark: wall time of ``mixer --help`` and of each command's ``--help``.

``mixer --help`` imports no command provider (envoy_mixer/cli/main.py), so it should cost
about what a bare interpreter does; the target is under 0.3 s. Each ``mixer <command> --help``
imports that command's provider only. Figures are the median of N runs of a fresh process
(the interpreter's own start-up included, shown as its own row).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.harness import print_table

RUNS = 15
TARGET_SECONDS = 0.3


def median_wall(argv: Sequence[str], runs: int = RUNS) -> float:
    """Median wall seconds of running ``argv`` to completion ``runs`` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Print the table."""
    from envoy_mixer.cli.main import COMMANDS

    mixer = [sys.executable, "-m", "envoy_mixer"]
    rows: list[list[object]] = [
        ["python -c pass (interpreter alone)", median_wall([sys.executable, "-c", "pass"])],
    ]
    top = median_wall([*mixer, "--help"])
    rows.append(["mixer --help", top])
    rows.extend([f"mixer {c.name} --help", median_wall([*mixer, c.name, "--help"], runs=5)]
                for c in COMMANDS)
    print_table(
        f"CLI start-up, wall seconds (median of {RUNS} runs, 5 per command; "
        f"target mixer --help < {TARGET_SECONDS} s: {'met' if top < TARGET_SECONDS else 'MISSED'})",
        ["command", "seconds"], rows,
    )


if __name__ == "__main__":
    main()
