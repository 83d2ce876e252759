"""``mixer up`` supervises its children: a killed service comes back while the mesh keeps
serving (fail closed while authz is down), and ``kill -9`` of ``mixer up`` itself leaves no
child behind (real pilot, Envoys and services).

(A port held at start-up, named with its holder's PID, is pinned in test_up.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.envoy.mesh import local_mesh, service_admin_ports
from envoy_mixer.dev import procs
from envoy_mixer.dev.meshup import pilot_ports
from envoy_mixer.dev.up import http_get, mesh_ports
from tests.waits import pid_alive as _alive
from tests.waits import until

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"

pytestmark = [
    pytest.mark.slow,
    # No child outliving mixer up rests on PR_SET_PDEATHSIG, which is Linux-only (CI is Linux).
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux"),
]


def _free_base() -> int:
    """A port base whose whole ``mixer up`` layout is free right now."""
    for _ in range(200):
        base = random.randrange(20000, 40000, 50)
        if not any(procs.port_in_use(p) for p in mesh_ports(
                local_mesh(base), service_admin_ports(base), pilot_ports(base))):
            return base
    raise RuntimeError("no free port range")


def _examples(tmp: Path) -> Path:
    """A private copy of examples/ (the demo mesh in mesh/ too)."""
    return Path(shutil.copytree(EXAMPLES, tmp / "examples"))


def _children(run_dir: Path) -> dict[str, int]:
    """The child PIDs ``mixer up`` wrote to its run directory."""
    data = json.loads((run_dir / "pids.json").read_text())
    children: dict[str, int] = data["children"]
    return children


def _kill_until_back(name: str, run_dir: Path, out: Path, url: str) -> list[int]:
    """SIGKILL child ``name``; the statuses of GET ``url`` until up says it is back."""
    os.kill(_children(run_dir)[name], signal.SIGKILL)
    statuses: list[int] = []

    def back() -> bool:
        statuses.append(http_get(url).status)
        return f"{name} is back (pid" in out.read_text()

    until(back, 30)
    assert f"{name} exited with -9 (SIGKILL); restarting in 0.5s" in out.read_text()
    return statuses


def test_killed_services_come_back_and_kill_9_of_up_leaves_no_child(tmp_path: Path) -> None:
    """kill -9 telemetry: /api/hello stays 200; authz: 403 (fail closed) till back; up: no child."""
    base, run_dir, out = _free_base(), tmp_path / "run", tmp_path / "up.out"
    with out.open("w") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "envoy_mixer.cli", "up", "--port-base", str(base),
             "--examples", str(_examples(tmp_path)), "--run-dir", str(run_dir)],
            stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    seen: dict[str, int] = {}
    try:
        until(lambda: "healthy after" in out.read_text() or up.poll() is not None, 60)
        assert up.poll() is None, out.read_text()
        seen = _children(run_dir)
        assert {"authz", "ratelimit", "telemetry", "pilot",
                "envoy istio-ingressgateway.istio-system"} <= set(seen), seen
        hello = f"http://127.0.0.1:{base}/api/hello"
        assert http_get(hello).status == 200

        assert set(_kill_until_back("telemetry", run_dir, out, hello)) == {200}
        now = _children(run_dir)
        assert now["telemetry"] != seen["telemetry"] and _alive(now["telemetry"])
        assert {n: p for n, p in now.items() if n != "telemetry"} == {
            n: p for n, p in seen.items() if n != "telemetry"}, "the others kept running"

        statuses = _kill_until_back("authz", run_dir, out, hello)
        assert 403 in statuses and set(statuses) <= {200, 403}, statuses
        until(lambda: http_get(hello).status == 200, 10)

        seen = _children(run_dir)
        up.kill()
        up.wait(10)
        until(lambda: not any(_alive(pid) for pid in seen.values()), 15)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)
        for pid in seen.values():  # the test failed: do not leave its mesh running
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
