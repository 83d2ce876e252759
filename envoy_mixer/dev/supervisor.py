"""Supervising child processes: restart what crashes, leave nothing behind, say what happened.

A :class:`Supervisor` owns the children described by :class:`ChildSpec` (name, argv, env, cwd,
log file, readiness check, :class:`RestartPolicy`). ``mixer up`` uses it for its Envoys, demo
apps and services, so that:

- a child that exits is started again after a backoff (:class:`Backoff`: 0.5 s doubling to
  10 s, starting over once a run lasted ``stable_after`` seconds; after ``max_quick_crashes``
  quick exits in a row it gives up and says so) while every other child keeps running;
- no child outlives the supervising process, however that process dies: on Linux each child
  asks the kernel (``PR_SET_PDEATHSIG``) to SIGKILL it when its parent dies, ``kill -9``
  included; each child also leads its own process group, so a normal :meth:`Supervisor.stop`
  (SIGTERM, a grace period, then SIGKILL) reaches whatever the child spawned too;
- every event is one line (:class:`Event`): ``telemetry exited with -9 (SIGKILL); restarting
  in 0.5s``, ``telemetry is back (pid 4242)``.

The supervisor does its work in :meth:`Supervisor.poll` (or the :meth:`Supervisor.run` loop)
on the thread that created it: restarts never block it (a due restart is done on the next
poll), and children are always forked from that one thread, which matters for PDEATHSIG (see
:func:`_die_with_parent`). The clock and the sleep are injected, so the restart schedule can
be tested on a fake clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from envoy_mixer.dev.procs import ManagedProcess, ProcessError

__all__ = [
    "NEVER",
    "Backoff",
    "Child",
    "ChildSpec",
    "ChildState",
    "Event",
    "EventKind",
    "ProcessError",
    "RestartPolicy",
    "Supervisor",
]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When, and how soon, a child that exited is started again."""

    #: False: an exit is reported and the child stays down.
    restart: bool = True
    first_delay: float = 0.5
    max_delay: float = 10.0
    factor: float = 2.0
    #: A child that ran this long before exiting was healthy: its backoff starts over.
    stable_after: float = 10.0
    #: Give up on the child at this many exits in a row, each sooner than ``stable_after``.
    max_quick_crashes: int = 8
    #: A started child not ready after this long is killed (which counts as a crash).
    ready_timeout: float = 30.0


#: The policy of a child that must not be restarted.
NEVER = RestartPolicy(restart=False)


class Backoff:
    """The restart delays of one child: exponential while it keeps exiting soon after start."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        #: Exits in a row, each within ``stable_after`` of its start.
        self.quick_crashes = 0

    def after_exit(self, uptime: float) -> float | None:
        """Seconds to wait before the next start, after a run of ``uptime`` s; None: give up."""
        policy = self._policy
        if not policy.restart:
            return None
        if uptime >= policy.stable_after:
            self.quick_crashes = 0
        self.quick_crashes += 1
        if self.quick_crashes >= policy.max_quick_crashes:
            return None
        delay: float = policy.first_delay * policy.factor ** (self.quick_crashes - 1)
        return min(delay, policy.max_delay)

    def reset(self) -> None:
        """Forget past crashes (a deliberate restart is not one)."""
        self.quick_crashes = 0


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child, check that it is ready, and restart it."""

    name: str
    argv: Sequence[str]
    log_path: Path
    #: True once the child serves (polled; should answer within about a second).
    ready: Callable[[], bool] = lambda: True
    #: Added to (overriding) this process's environment.
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)

    @classmethod
    def of(cls, process: ManagedProcess, name: str | None = None,
           policy: RestartPolicy | None = None) -> ChildSpec:
        """The spec of a (not started) ``procs.ManagedProcess``, so its tables can be reused."""
        return cls(name or process.name, tuple(process.argv), process.log_path, process.ready,
                   env=process.env, policy=policy or RestartPolicy())


class ChildState(enum.StrEnum):
    """Where a child is in its life."""

    IDLE = "idle"  # added, never started
    STARTING = "starting"  # running, not ready yet
    READY = "ready"
    BACKOFF = "backoff"  # exited; a restart is scheduled
    FAILED = "failed"  # exited; will not be restarted
    STOPPED = "stopped"  # stopped by the supervisor


class EventKind(enum.StrEnum):
    """What an :class:`Event` reports."""

    EXITED = "exited"  # a child exited; restart scheduled
    GAVE_UP = "gave_up"  # a child exited and stays down
    BACK = "back"  # a restarted child is ready again
    UNREADY = "unready"  # a child not ready in time was killed
    SPAWN_FAILED = "spawn_failed"  # the child could not even be executed


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a child, with its one-line :attr:`message`."""

    kind: EventKind
    name: str
    pid: int | None = None
    returncode: int | None = None
    delay: float | None = None
    detail: str = ""

    @property
    def message(self) -> str:
        """The line a user reads."""
        retry = f"restarting in {self.delay:g}s" if self.delay is not None else ""
        if self.kind is EventKind.EXITED:
            return f"{self.name} exited with {_status(self.returncode)}; {retry}"
        if self.kind is EventKind.GAVE_UP:
            return f"{self.name} exited with {_status(self.returncode)}; {self.detail}"
        if self.kind is EventKind.BACK:
            return f"{self.name} is back (pid {self.pid})"
        if self.kind is EventKind.UNREADY:
            return f"{self.name} (pid {self.pid}) {self.detail}; killing it"
        return f"{self.name} could not be started: {self.detail}; {retry or 'giving up'}"


def _status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"{returncode} ({signal.Signals(-returncode).name})"
    return str(returncode)


class Child:
    """One supervised process: its spec, state and current pid."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.state = ChildState.IDLE
        #: How many times it was started again (after crashes and on request).
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_at = 0.0
        self._restart_at = 0.0
        self._backoff = Backoff(spec.policy)

    @property
    def name(self) -> str:
        """The spec's name."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) process, None before the first start."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the current process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log (all its runs, appended)."""
        with contextlib.suppress(OSError):
            text = self.spec.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _print_event(event: Event) -> None:
    print(event.message, file=sys.stderr, flush=True)


class Supervisor:
    """Starts, watches, restarts and stops a set of children (see the module docstring).

    Use it from one thread, the one that created it: children are forked there, and on Linux
    each dies with that thread (PDEATHSIG), so it must live as long as the children should,
    as the main thread does.
    """

    def __init__(
        self, *, on_event: Callable[[Event], None] = _print_event, clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep, stop_timeout: float = 5.0,
        pid_file: Path | None = None,
    ) -> None:
        #: Where events go; may be replaced (e.g. once the caller knows its output stream).
        self.on_event = on_event
        self._clock = clock
        self._sleep = sleep
        self._stop_timeout = stop_timeout
        #: JSON {"supervisor": pid, "children": {name: pid}}, kept current while running.
        self.pid_file = pid_file
        self._children: dict[str, Child] = {}
        self._owner = threading.get_ident()
        self._stopping = False

    # ------------------------------------------------------------------------ the table

    def add(self, spec: ChildSpec) -> Child:
        """Register a child (not started). Names are unique."""
        if spec.name in self._children:
            raise ValueError(f"a child named {spec.name!r} is already supervised")
        child = Child(spec)
        self._children[spec.name] = child
        return child

    @property
    def children(self) -> Mapping[str, Child]:
        """The children by name, in the order they were added."""
        return self._children

    def __getitem__(self, name: str) -> Child:
        return self._children[name]

    def pids(self) -> dict[str, int]:
        """PID of every child whose process is running."""
        return {n: c.proc.pid for n, c in self._children.items()
                if c.proc is not None and c.proc.poll() is None}

    # ------------------------------------------------------------------------ lifecycle

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start the given children (default: all) that are not running yet; do not wait."""
        self._stopping = False
        for child in self._select(names):
            if child.state in (ChildState.IDLE, ChildState.STOPPED):
                self._spawn(child, restart=False)

    def wait_ready(self, timeout: float, names: Iterable[str] | None = None) -> None:
        """Block until the children (default: all) are ready.

        Raises ProcessError, with the log tail, when one exits first or ``timeout`` passes:
        a child that cannot come up at all is a start-up error, not something to retry.
        """
        deadline = self._clock() + timeout
        pending = [c for c in self._select(names) if c.state is not ChildState.READY]
        while pending:
            for child in list(pending):
                if child.proc is None:
                    raise ProcessError(f"{child.name} was never started")
                code = child.proc.poll()
                if code is not None:
                    raise ProcessError(f"{child.name} exited with {_status(code)}:\n"
                                       f"{child.log_tail()}")
                if child.spec.ready():
                    child.state = ChildState.READY
                    pending.remove(child)
            if not pending:
                return
            if self._clock() >= deadline:
                child = pending[0]
                raise ProcessError(f"{child.name} not ready after {timeout:g}s:\n"
                                   f"{child.log_tail()}")
            self._sleep(0.05)

    def poll(self) -> list[Event]:
        """One round: notice exits, schedule and do due restarts, check readiness.

        Never waits for a restart: one that is not due yet is left for a later poll. Each
        event is passed to ``on_event`` and returned.
        """
        events: list[Event] = []
        for child in self._children.values():
            events += self._step(child, self._clock())
        for event in events:
            self.on_event(event)
        if events:
            self._write_pid_file()
        return events

    def run(self, should_stop: Callable[[], bool], interval: float = 0.25) -> None:
        """Poll every ``interval`` seconds until ``should_stop()``."""
        while not should_stop():
            self.poll()
            self._sleep(interval)

    def restart(self, name: str, timeout: float = 15.0) -> Child:
        """Stop a child and start it again now (e.g. for a new config); wait until ready.

        A deliberate restart is not a crash: the child's backoff starts over.
        """
        child = self._children[name]
        self._terminate(child)
        child._backoff.reset()
        self._spawn(child, restart=True)
        self.wait_ready(timeout, [name])
        return child

    def stop(self) -> None:
        """Stop every child, last added first: SIGTERM, ``stop_timeout``, then SIGKILL."""
        self._stopping = True
        for child in reversed(list(self._children.values())):
            self._terminate(child)
            if child.state is not ChildState.IDLE:
                child.state = ChildState.STOPPED
        if self.pid_file is not None:
            with contextlib.suppress(OSError):
                self.pid_file.unlink()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------ internals

    def _select(self, names: Iterable[str] | None) -> list[Child]:
        if names is None:
            return list(self._children.values())
        return [self._children[n] for n in names]

    def _step(self, child: Child, now: float) -> list[Event]:
        if self._stopping:
            return []
        if child.state in (ChildState.STARTING, ChildState.READY) and child.proc is not None:
            code = child.proc.poll()
            if code is not None:
                return [self._exited(child, code, now)]
            if child.state is ChildState.STARTING:
                return self._check_ready(child, now)
        elif child.state is ChildState.BACKOFF and now >= child._restart_at:
            return self._respawn(child, now)
        return []

    def _check_ready(self, child: Child, now: float) -> list[Event]:
        if child.spec.ready():
            child.state = ChildState.READY
            return [Event(EventKind.BACK, child.name, pid=child.pid)] if child.restarts else []
        timeout = child.spec.policy.ready_timeout
        if now - child._started_at < timeout or child.proc is None:
            return []
        # Killed now, its exit is noticed (and the restart scheduled) on the next poll.
        _killpg(child.proc.pid, signal.SIGKILL)
        return [Event(EventKind.UNREADY, child.name, pid=child.pid,
                      detail=f"not ready {timeout:g}s after starting")]

    def _exited(self, child: Child, code: int, now: float) -> Event:
        pid = child.pid
        if pid is not None:
            # Whatever the child spawned into its group would otherwise hold its ports.
            _killpg(pid, signal.SIGKILL)
        child._close_log()
        delay = child._backoff.after_exit(now - child._started_at)
        if delay is None:
            child.state = ChildState.FAILED
            return Event(EventKind.GAVE_UP, child.name, pid=pid, returncode=code,
                         detail=self._why_not(child))
        child.state = ChildState.BACKOFF
        child._restart_at = now + delay
        return Event(EventKind.EXITED, child.name, pid=pid, returncode=code, delay=delay)

    def _why_not(self, child: Child) -> str:
        policy = child.spec.policy
        log = f"(log: {child.spec.log_path})"
        if not policy.restart:
            return f"not restarting it {log}"
        return (f"it exited {child._backoff.quick_crashes} times in a row, each within "
                f"{policy.stable_after:g}s of starting: giving up {log}")

    def _respawn(self, child: Child, now: float) -> list[Event]:
        try:
            self._spawn(child, restart=True)
        except (OSError, subprocess.SubprocessError) as exc:
            delay = child._backoff.after_exit(0.0)
            if delay is None:
                child.state = ChildState.FAILED
            else:
                child._restart_at = now + delay
            return [Event(EventKind.SPAWN_FAILED, child.name, delay=delay, detail=str(exc))]
        return []

    def _spawn(self, child: Child, *, restart: bool) -> None:
        if threading.get_ident() != self._owner:
            # PDEATHSIG is tied to the forking thread: a child forked here would be killed
            # when this (possibly short-lived) thread ends.
            raise RuntimeError("Supervisor children must be started from the thread that "
                               "created the supervisor")
        spec = child.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A restart appends: the crash output of the previous run is what one wants to read.
        log = spec.log_path.open("ab" if restart else "wb")
        if restart:
            log.write(f"--- {spec.name} started again by the supervisor ---\n".encode())
            log.flush()
        env = dict(os.environ)
        if spec.env:
            env.update(spec.env)
        try:
            # start_new_session: its own process group (and no controlling terminal, so a
            # Ctrl-C reaches only us and we stop the children in order).
            proc = subprocess.Popen(
                list(spec.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=spec.cwd, start_new_session=True, preexec_fn=_die_with_parent(),
            )
        except BaseException:
            log.close()
            raise
        child.proc, child._log = proc, log
        child._started_at = self._clock()
        child.state = ChildState.STARTING
        if restart:
            child.restarts += 1
        self._write_pid_file()

    def _terminate(self, child: Child) -> None:
        proc = child.proc
        if proc is not None:
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(self._stop_timeout)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            # The group may outlive its leader (a grandchild ignoring SIGTERM): sweep it.
            _killpg(proc.pid, signal.SIGKILL)
        child._close_log()

    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        data = {"supervisor": os.getpid(), "children": self.pids()}
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        with contextlib.suppress(OSError):
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            # Atomic: a reader (a test, a user's script) never sees half a file.
            tmp.replace(self.pid_file)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# ---------------------------------------------------------------------------- PDEATHSIG

_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    fn: Callable[..., int] = prctl
    return fn


# Looked up once, before any fork: the code run in the child between fork and exec must not
# import or take locks another thread may have held at fork time (up.py has a certificate
# rotation thread), which is why subprocess warns about preexec_fn. A ctypes call and getppid
# take none.
_PRCTL = _load_prctl()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel SIGKILL the child when its parent dies (Linux).

    The "parent" is the thread that forked, not the process: the signal fires when that
    thread ends, so children are forked only from the supervisor's own long-lived thread.
    PDEATHSIG survives execve (Envoy's console script execs the real binary, same pid) except
    into a set-uid program. Grandchildren do not inherit it; stop() kills the process group.
    """
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        # The parent died between fork and prctl: the signal will never come, so go now.
        if os.getppid() != parent:
            os._exit(1)

    return preexec
