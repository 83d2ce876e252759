"""CLI and lifecycle timings: ``mixer --help``, each command's ``--help``, config reload
latency, and how long ``mixer up --check`` takes to get its mesh healthy.

``mixer --help`` imports no command provider (envoy_mixer/cli/main.py), so it should cost
about what a bare interpreter does; the target is under 0.3 s. Each ``mixer <command> --help``
imports that command's provider only. Figures are the median of N runs of a fresh process
(the interpreter's own start-up included, shown as its own row).

These are the figures the tests used to assert as durations (tests/envoy_mixer/dev/test_up.py
had "healthy within 15 s" and "a policy edit applies within 2 s"); on a loaded machine a
duration is a benchmark result, not a pass/fail property.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

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


def reload_latency(rounds: int = 5) -> float:
    """Median seconds from a config file edit to the new snapshot, with the services' defaults.

    The shared ``Reloader`` (poll interval 0.5 s, settle 0.05 s) every service uses for its
    rules files, watching a real file; dominated by the poll interval by design.
    """
    from prometheus_client import CollectorRegistry

    from envoy_mixer.common.snapshot import Snapshot
    from envoy_mixer.runtime.reload import Reloader

    async def measure() -> list[float]:
        path = Path(tempfile.mkdtemp(prefix="mixer-reload-bench-")) / "rules.yaml"
        path.write_text("v0\n")
        swapped = asyncio.Event()
        reloader = Reloader(service="bench", paths=[path], load=path.read_text,
                            snapshot=Snapshot(), registry=CollectorRegistry(),
                            on_swap=lambda _: swapped.set())
        reloader.reload()
        watcher = asyncio.create_task(reloader.watch())
        times = []
        try:
            for i in range(1, rounds + 1):
                await asyncio.sleep(0.3)  # edits land at different points of the poll cycle
                swapped.clear()
                started = time.perf_counter()
                path.write_text(f"v{i}\n")
                await asyncio.wait_for(swapped.wait(), 30)
                times.append(time.perf_counter() - started)
        finally:
            watcher.cancel()
        return times

    return statistics.median(asyncio.run(measure()))


def up_check_seconds() -> tuple[float | None, str]:
    """``mixer up --check``: (seconds until its mesh was healthy, or None, and a note)."""
    from controlplane.envoy.mesh import local_mesh, service_admin_ports
    from envoy_mixer.dev import procs
    from envoy_mixer.dev.up import mesh_ports

    bases = range(20000, 40000, 50)
    base = next(b for b in bases if not any(
        procs.port_in_use(p) for p in mesh_ports(local_mesh(b), service_admin_ports(b))))
    examples = Path(__file__).resolve().parent.parent / "examples"
    with tempfile.TemporaryDirectory(prefix="mixer-up-bench-") as tmp:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "envoy_mixer", "up", "--check", "--port-base", str(base),
             "--examples", str(examples), "--run-dir", str(Path(tmp) / "run"),
             "--timeout", "120"],
            capture_output=True, text=True, timeout=300, check=False, cwd=tmp,
        )
        total = time.perf_counter() - started
    if out.returncode != 0 or "(healthy after " not in out.stdout:
        return None, f"failed (exit {out.returncode}): {out.stderr.strip()[-200:]}"
    healthy = float(out.stdout.split("(healthy after ")[1].split("s)")[0])
    return healthy, f"whole run {total:.1f} s"


def main() -> None:
    """Print the tables."""
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
    healthy, note = up_check_seconds()
    print_table(
        "Lifecycle, wall seconds",
        ["what", "seconds", "note"],
        [["config edit -> new snapshot (Reloader defaults; median of 5)", reload_latency(),
          "poll 0.5 s + settle 0.05 s"],
         ["mixer up --check: mesh healthy after", healthy if healthy is not None else "-",
          note]],
    )


if __name__ == "__main__":
    main()
