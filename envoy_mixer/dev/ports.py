"""Who holds a TCP port: the PID and command line behind a listening socket (Linux ``/proc``).

``mixer up`` refuses to start when one of its ports is taken; the usual culprit is an orphan of
an earlier run, so the error names the process (``port 9191 (authz gRPC) is held by pid 1234
(python -m envoy_mixer.cli authz ...)``) instead of leaving the user to hunt for it.

How: ``/proc/net/tcp`` and ``/proc/net/tcp6`` list every socket with its local port, state and
inode; a process holds the socket if one of its ``/proc/PID/fd/*`` links reads
``socket:[INODE]``. Processes of other users cannot be looked into without privileges: their
sockets are found but their PIDs are not, which :func:`describe_port` says. Elsewhere than Linux
nothing is found and the message falls back to the port alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PortHolder", "describe_port", "port_holders", "socket_inodes"]

#: The /proc/net/tcp state that holds a port against a new listener: LISTEN (0A). Connected
#: sockets (and TIME_WAIT ones, inode 0) do not stop a listener that sets SO_REUSEADDR, as our
#: services and Envoy do. A socket bound but not listening is not in the table at all (it is
#: only in the kernel's bind hash), so it shows as "in use" with no holder.
_LISTEN = "0A"
_TABLES = ("net/tcp", "net/tcp6")


@dataclass(frozen=True, slots=True)
class PortHolder:
    """A process holding a socket on the port."""

    pid: int
    cmdline: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line as one string (``?`` when it cannot be read, e.g. a zombie)."""
        return " ".join(self.cmdline) if self.cmdline else "?"


def socket_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the TCP sockets (IPv4 and IPv6) listening on ``port``."""
    inodes: set[int] = set()
    for table in _TABLES:
        with contextlib.suppress(OSError):
            inodes |= set(_parse_table((proc / table).read_text().splitlines(), port))
    return inodes


def _parse_table(lines: Iterable[str], port: int) -> Iterator[int]:
    """Inodes on ``port`` from the lines of one /proc/net/tcp* table (header included)."""
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 10 or ":" not in fields[1]:
            continue
        try:
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            inode = int(fields[9])
        except ValueError:  # the header line
            continue
        if local_port == port and fields[3] == _LISTEN and inode != 0:
            yield inode


def port_holders(port: int, proc: Path = Path("/proc")) -> list[PortHolder]:
    """The processes holding a TCP socket listening on ``port``, by PID."""
    wanted = {f"socket:[{inode}]" for inode in socket_inodes(port, proc)}
    if not wanted:
        return []
    holders: list[PortHolder] = []
    for entry in _pid_dirs(proc):
        if any(link in wanted for link in _fd_links(entry)):
            holders.append(PortHolder(int(entry.name), _cmdline(entry)))
    return sorted(holders, key=lambda h: h.pid)


def _pid_dirs(proc: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if entry.name.isdigit():
                yield entry


def _fd_links(pid_dir: Path) -> Iterator[str]:
    # Another user's process (EACCES) or one that just exited (ENOENT): nothing to see.
    try:
        fds = os.listdir(pid_dir / "fd")
    except OSError:
        return
    for fd in fds:
        with contextlib.suppress(OSError):
            yield os.readlink(pid_dir / "fd" / fd)


def _cmdline(pid_dir: Path) -> tuple[str, ...]:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def describe_port(port: int, role: str, proc: Path = Path("/proc")) -> str:
    """One clause for a 'port taken' error: the port, its role in the mesh, and who holds it."""
    holders = port_holders(port, proc)
    if holders:
        who = ", ".join(f"pid {h.pid} ({_shorten(h.command)})" for h in holders)
        return f"port {port} ({role}) is held by {who}"
    if socket_inodes(port, proc):
        return (f"port {port} ({role}) is held by a process this user cannot inspect "
                "(another user's?)")
    return f"port {port} ({role}) is in use"


def _shorten(command: str, limit: int = 120) -> str:
    # Envoy and our services have long command lines; the head names the process well enough.
    return command if len(command) <= limit else command[: limit - 3] + "..."
