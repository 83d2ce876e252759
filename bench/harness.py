"""Shared benchmark machinery: servers in subprocesses, a load client, CPU per call, tables.

The figure that matters is the **server's CPU time per call**, read from ``/proc/<pid>/stat``
before and after a bounded load: unlike requests/s it does not depend on how fast the load
client is, so "ours vs. the trivial servicer" is a fair ratio on a noisy 2-core machine. Both
sides are measured in the same run, alternating, and the median of the rounds is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.client import write_payloads
from envoy_mixer.dev import procs

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is fields[0]; utime/stime are the 14th/15th stat fields.
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True, slots=True)
class Measurement:
    """One bounded load against one server."""

    name: str
    calls: int
    errors: int
    seconds: float
    server_cpu: float

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        """Server CPU microseconds per successful call."""
        return self.server_cpu / self.calls * 1e6 if self.calls else float("inf")


@dataclass
class GrpcTarget:
    """A gRPC server to measure: how to start it and where it listens."""

    name: str
    argv: Sequence[str]
    port: int
    ready: Callable[[], bool]
    env: dict[str, str] | None = None


def trivial_target(api: str) -> GrpcTarget:
    """The always-OK servicer for ``api`` (ratelimit, authz or accesslog) on a free port."""
    port = procs.free_port()
    return GrpcTarget(
        name=f"trivial {api}",
        argv=[sys.executable, "-m", "bench.trivial", "--api", api, "--listen", f"127.0.0.1:{port}"],
        port=port,
        ready=lambda: procs.tcp_ok(port),
    )


def runtime_trivial_target(api: str) -> GrpcTarget:
    """The always-OK servicer for ``api`` hosted on our shared runtime (see bench.trivial)."""
    port, admin = procs.free_port(), procs.free_port()
    return GrpcTarget(
        name=f"trivial {api} on mixer runtime",
        argv=[sys.executable, "-m", "bench.trivial", "--api", api,
              "--listen", f"127.0.0.1:{port}", "--runtime-admin", f"127.0.0.1:{admin}"],
        port=port,
        ready=lambda: procs.http_ok(f"http://127.0.0.1:{admin}/healthz"),
    )


def mixer_target(name: str, args: Sequence[str], env: dict[str, str] | None = None) -> GrpcTarget:
    """One of our services (``mixer ARGS``) on free gRPC and admin ports."""
    port, admin = procs.free_port(), procs.free_port()
    argv = [sys.executable, "-m", "envoy_mixer.cli", *args,
            "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
            "--log-level", "warning"]
    return GrpcTarget(name=name, argv=argv, port=port,
                      ready=lambda: procs.http_ok(f"http://127.0.0.1:{admin}/healthz"), env=env)


def run_client(port: int, method: str, payload_file: Path, seconds: float,
               concurrency: int) -> dict[str, object]:
    """Drive load from a separate process so client CPU never counts as the server's."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.client", "--target", f"127.0.0.1:{port}",
         "--method", method, "--payloads", str(payload_file), "--seconds", str(seconds),
         "--concurrency", str(concurrency)],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def compare_unary(
    targets: Sequence[GrpcTarget],
    method: str,
    payloads: Sequence[bytes],
    *,
    seconds: float = 4.0,
    rounds: int = 3,
    concurrency: int = 32,
) -> dict[str, Measurement]:
    """Measure every target ``rounds`` times, alternating, and keep each one's median round.

    All servers run for the whole comparison (started once) so warm-up and background load hit
    them equally; a 1 s warm-up load precedes the measured rounds.
    """
    workdir = Path(tempfile.mkdtemp(prefix="mixer-bench-"))
    payload_file = workdir / "payloads.bin"
    write_payloads(payload_file, list(payloads))
    running: list[tuple[GrpcTarget, procs.ManagedProcess]] = []
    try:
        for target in targets:
            proc = procs.ManagedProcess(
                name=target.name, argv=target.argv, log_path=workdir / f"{target.port}.log",
                ready=target.ready, env=target.env,
            ).start()
            running.append((target, proc))
        for _, proc in running:
            proc.wait_ready(30)
        for target, _ in running:
            run_client(target.port, method, payload_file, 1.0, concurrency)
        samples: dict[str, list[Measurement]] = {t.name: [] for t in targets}
        for _ in range(rounds):
            for target, proc in running:
                assert proc.proc is not None
                before = cpu_seconds(proc.proc.pid)
                result = run_client(target.port, method, payload_file, seconds, concurrency)
                after = cpu_seconds(proc.proc.pid)
                samples[target.name].append(Measurement(
                    name=target.name, calls=int(str(result["calls"])),
                    errors=int(str(result["errors"])), seconds=float(str(result["seconds"])),
                    server_cpu=after - before,
                ))
        return {
            name: sorted(ms, key=lambda m: m.cpu_us_per_call)[len(ms) // 2]
            for name, ms in samples.items()
        }
    finally:
        for _, proc in running:
            proc.stop()


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain-text table with a title."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in cells[1:]:
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                        for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("x", "").replace("-", "").isdigit()


def comparison_rows(results: dict[str, Measurement], baseline: str) -> list[list[object]]:
    """Table rows: name, calls/s, server CPU µs/call, CPU ratio to ``baseline``, errors."""
    base = results[baseline].cpu_us_per_call
    return [
        [m.name, m.rate, m.cpu_us_per_call, f"{m.cpu_us_per_call / base:.2f}x", m.errors]
        for m in results.values()
    ]


COMPARISON_HEADERS = ("server", "calls/s", "server CPU µs/call", "CPU vs trivial", "errors")


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)
