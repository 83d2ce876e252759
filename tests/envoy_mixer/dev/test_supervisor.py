"""The Supervisor: backoff on a fake clock, real children killed and restarted, none left over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from envoy_mixer.dev.procs import ManagedProcess, ProcessError
from envoy_mixer.dev.supervisor import (
    NEVER,
    Backoff,
    ChildSpec,
    ChildState,
    Event,
    EventKind,
    RestartPolicy,
    Supervisor,
)
from tests.waits import pid_alive as _alive
from tests.waits import until

# PR_SET_PDEATHSIG and /proc are Linux-only; the supervisor documents that, and CI is Linux.
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux")

SLEEPER = [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"]
EXIT_3 = [sys.executable, "-c", "raise SystemExit(3)"]


def _polluntil(sup: Supervisor, events: list[Event], kind: EventKind, count: int = 1) -> None:
    """Poll ``sup`` until ``count`` events of ``kind`` were reported in all."""
    def seen() -> bool:
        sup.poll()
        return sum(e.kind is kind for e in events) >= count

    until(seen)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def events() -> list[Event]:
    """Events a supervisor reported, in order."""
    return []


@pytest.fixture
def make_supervisor(events: list[Event]) -> Iterator[Callable[..., Supervisor]]:
    """Supervisors whose events go to ``events``; every one is stopped at teardown."""
    made: list[Supervisor] = []

    def make(**kwargs: Any) -> Supervisor:
        kwargs.setdefault("stop_timeout", 2.0)
        sup = Supervisor(on_event=events.append, **kwargs)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop()


# ---------------------------------------------------------------------------- policy, pure

def test_backoff_doubles_to_the_cap_then_gives_up() -> None:
    """Quick exits in a row wait 0.5, 1, 2, 4, 8, 10, 10 s, and the 8th gives up."""
    backoff = Backoff(RestartPolicy())
    delays = [backoff.after_exit(uptime=1.0) for _ in range(8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, None]


def test_backoff_starts_over_after_a_stable_run() -> None:
    """A run that lasted stable_after seconds resets the delay to the first one."""
    backoff = Backoff(RestartPolicy(stable_after=10.0))
    assert [backoff.after_exit(1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert backoff.after_exit(10.0) == 0.5
    assert backoff.after_exit(0.1) == 1.0


def test_never_policy_does_not_restart() -> None:
    """With restart=False every exit is final."""
    assert Backoff(NEVER).after_exit(100.0) is None


def test_messages_name_the_child_the_signal_and_the_delay() -> None:
    """Events read as one line each, signals by name."""
    assert Event(EventKind.EXITED, "telemetry", pid=7, returncode=-9, delay=0.5).message == (
        "telemetry exited with -9 (SIGKILL); restarting in 0.5s")
    assert Event(EventKind.BACK, "telemetry", pid=8).message == "telemetry is back (pid 8)"
    assert Event(EventKind.EXITED, "authz", returncode=1, delay=2.0).message == (
        "authz exited with 1; restarting in 2s")


def test_a_managed_process_table_converts_to_specs(tmp_path: Path) -> None:
    """ChildSpec.of keeps argv, log, readiness and env of a procs.ManagedProcess."""
    def ready() -> bool:
        return True

    proc = ManagedProcess("mixer authz", ["mixer", "authz"], tmp_path / "a.log", ready,
                          env={"A": "1"})
    spec = ChildSpec.of(proc, name="authz")
    assert (spec.name, tuple(spec.argv), spec.log_path, spec.ready, spec.env) == (
        "authz", ("mixer", "authz"), tmp_path / "a.log", ready, {"A": "1"})
    assert spec.policy == RestartPolicy()


# ---------------------------------------------------------------------------- real children

@pytest.mark.slow
def test_restart_waits_for_the_backoff_on_the_clock(
    tmp_path: Path, make_supervisor: Callable[..., Supervisor], events: list[Event],
) -> None:
    """A crashing child is restarted only once its delay passed, with growing delays, then not."""
    clock = FakeClock()
    sup = make_supervisor(clock=clock)
    child = sup.add(ChildSpec("crasher", EXIT_3, tmp_path / "crasher.log",
                              policy=RestartPolicy(max_quick_crashes=3)))
    sup.start()

    _polluntil(sup, events, EventKind.EXITED)
    assert events[-1].message == "crasher exited with 3; restarting in 0.5s"
    assert child.state is ChildState.BACKOFF
    clock.now = 0.4
    sup.poll()
    assert child.restarts == 0
    clock.now = 0.5
    sup.poll()
    assert child.restarts == 1
    _polluntil(sup, events, EventKind.EXITED, 2)
    assert events[-1].delay == 1.0
    clock.now = 1.5
    sup.poll()
    assert child.restarts == 2
    _polluntil(sup, events, EventKind.GAVE_UP)
    assert sup["crasher"].state is ChildState.FAILED  # (not `child`: mypy narrowed it above)
    assert "3 times in a row" in events[-1].message
    assert str(tmp_path / "crasher.log") in events[-1].message


@pytest.mark.slow
def test_a_killed_child_comes_back_and_the_others_keep_running(
    tmp_path: Path, make_supervisor: Callable[..., Supervisor], events: list[Event],
) -> None:
    """SIGKILL of one child: reported, restarted with a new pid; its sibling is untouched."""
    sup = make_supervisor(pid_file=tmp_path / "pids.json")
    policy = RestartPolicy(first_delay=0.1)
    victim = sup.add(ChildSpec("telemetry", SLEEPER, tmp_path / "telemetry.log", policy=policy))
    other = sup.add(ChildSpec("authz", SLEEPER, tmp_path / "authz.log", policy=policy))
    sup.start()
    sup.wait_ready(10)
    old_pid, other_pid = victim.pid, other.pid
    assert old_pid is not None and other_pid is not None
    assert json.loads((tmp_path / "pids.json").read_text())["children"] == {
        "telemetry": old_pid, "authz": other_pid}

    os.kill(old_pid, signal.SIGKILL)
    _polluntil(sup, events, EventKind.BACK)
    assert [e.message for e in events] == [
        "telemetry exited with -9 (SIGKILL); restarting in 0.1s",
        f"telemetry is back (pid {victim.pid})",
    ]
    assert victim.pid != old_pid and victim.running and victim.restarts == 1
    assert other.pid == other_pid and other.running
    assert json.loads((tmp_path / "pids.json").read_text())["children"]["telemetry"] == victim.pid


@pytest.mark.slow
def test_a_child_that_cannot_come_up_is_a_start_up_error(
    tmp_path: Path, make_supervisor: Callable[..., Supervisor],
) -> None:
    """wait_ready raises with the child's output when it exits or stays unready; no retry."""
    sup = make_supervisor()
    say = [sys.executable, "-c", "print('bad config: line 3'); raise SystemExit(2)"]
    sup.add(ChildSpec("authz", say, tmp_path / "authz.log", ready=lambda: False))
    sup.add(ChildSpec("slow", SLEEPER, tmp_path / "slow.log", ready=lambda: False))
    sup.start()
    with pytest.raises(ProcessError, match=r"authz exited with 2:\nbad config: line 3"):
        sup.wait_ready(10, ["authz"])
    with pytest.raises(ProcessError, match=r"slow not ready after 0.2s"):
        sup.wait_ready(0.2, ["slow"])


@pytest.mark.slow
@linux
def test_stop_kills_a_child_that_ignores_sigterm_and_its_group(
    tmp_path: Path, make_supervisor: Callable[..., Supervisor],
) -> None:
    """stop(): SIGTERM, then SIGKILL of the group, so a stubborn child and its own child die."""
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "stubborn.log"
    sup = make_supervisor(stop_timeout=0.3)
    child = sup.add(ChildSpec("stubborn", [sys.executable, "-c", script], log,
                              ready=lambda: log.read_text().strip().isdigit()))
    sup.start()
    sup.wait_ready(10)
    grandchild = int(log.read_text())
    pid = child.pid
    assert pid is not None
    sup.stop()
    assert not _alive(pid)
    until(lambda: not _alive(grandchild))
    assert child.state is ChildState.STOPPED


PARENT = """
import sys
from pathlib import Path
from envoy_mixer.dev.supervisor import ChildSpec, Supervisor

run = Path(sys.argv[1])
sup = Supervisor(pid_file=run / "pids.json")
sup.add(ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                  run / "sleeper.log"))
sup.start()
sup.run(should_stop=lambda: False)
"""


@pytest.mark.slow
@linux
def test_kill_9_of_the_parent_leaves_no_child(tmp_path: Path) -> None:
    """A supervising process killed with SIGKILL takes its children with it (PDEATHSIG)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],
                              cwd=Path(__file__).resolve().parents[3])
    child: int | None = None
    try:
        pids = tmp_path / "pids.json"
        until(pids.exists, timeout=20)
        child = json.loads(pids.read_text())["children"]["sleeper"]
        assert child is not None and _alive(child)
        parent.kill()
        parent.wait(10)
        until(lambda: not _alive(child))
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None and _alive(child):  # the test failed: still clean up
            os.kill(child, signal.SIGKILL)
