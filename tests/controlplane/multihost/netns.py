"""Linux network namespaces as hosts: a control-plane host and two workload hosts.

``Hosts.create(tag)`` makes three namespaces ``cp-TAG``, ``h1-TAG`` and ``h2-TAG`` joined by two
point-to-point veth links (cp<->h1, cp<->h2); h1 and h2 reach each other through cp, which
forwards (``ip_forward`` is set in cp's namespace only). Every address lives inside these
namespaces, so nothing the test sends can leave them::

    h1 10.253.11.2/30 --- 10.253.11.1/30 cp 10.253.11.5/30 --- 10.253.11.6/30 h2

The test process itself stays in its own namespace: ``Hosts.run(host, fn)`` runs ``fn`` on a
fresh thread that has joined the host's namespace with ``setns(2)`` (a network namespace is
per thread), so sockets it opens are that host's; ``Hosts.process`` starts a child with
``ip netns exec``. ``Hosts.destroy`` deletes the namespaces, which deletes their veths.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from envoy_mixer.dev import procs

T = TypeVar("T")

#: ``CLONE_NEWNET`` of <sched.h>: setns joins a network namespace.
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

#: Each host's address on its link(s); mesh/workloads.yaml and mesh/sidecars.yaml name them.
CP_TO_H1, H1 = "10.253.11.1", "10.253.11.2"
CP_TO_H2, H2 = "10.253.11.5", "10.253.11.6"
SUBNET = "10.253.11.0/24"
#: Where the control plane and the services listen: cp's address on the h1 link (h2 reaches
#: it through its route via cp, like any host not on that link).
CP = CP_TO_H1


class NetnsUnavailable(RuntimeError):
    """The kernel (or the missing tooling) refuses network namespaces; the text says why."""


class NetnsSetupError(RuntimeError):
    """Namespaces exist, but building the links between them failed: a real failure."""


def _ip(*args: str, refused: type[RuntimeError] = NetnsSetupError) -> None:
    """Run ``ip ARGS``; raise ``refused`` with ip's own message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise refused(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def ensure_iproute2() -> None:
    """Install iproute2 when ``ip`` is missing (root with apt-get only); else say why not."""
    if shutil.which("ip"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise NetnsUnavailable("no `ip` (iproute2) and no root apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "iproute2"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                              check=False)
        if done.returncode != 0:
            raise NetnsUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    if not shutil.which("ip"):
        raise NetnsUnavailable("iproute2 installed but `ip` is still not on PATH")


def _setns(name: str) -> None:
    """Move the calling thread into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass
class Hosts:
    """Three namespaces (``cp``, ``h1``, ``h2`` → their real names) and what runs in them."""

    names: dict[str, str]
    started: list[procs.ManagedProcess] = field(default_factory=list)

    @classmethod
    def create(cls, tag: str) -> Hosts:
        """Make the namespaces and links; on any failure delete what was made and raise."""
        ensure_iproute2()
        hosts = cls({h: f"mh-{h}-{tag}" for h in ("cp", "h1", "h2")})
        made: list[str] = []
        try:
            # Only the kernel refusing a namespace is a reason to skip; once they exist, a link
            # or address that cannot be made is a failure of the test's setup.
            for name in hosts.names.values():
                _ip("netns", "add", name, refused=NetnsUnavailable)
                made.append(name)
            cp, h1, h2 = (hosts.names[h] for h in ("cp", "h1", "h2"))
            # Created directly inside the namespaces: no interface ever appears in ours.
            _ip("link", "add", "to-h1", "netns", cp, "type", "veth", "peer", "name", "to-cp",
                "netns", h1)
            _ip("link", "add", "to-h2", "netns", cp, "type", "veth", "peer", "name", "to-cp",
                "netns", h2)
            for ns, dev, addr in ((cp, "to-h1", CP_TO_H1), (cp, "to-h2", CP_TO_H2),
                                  (h1, "to-cp", H1), (h2, "to-cp", H2)):
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
            for ns in (cp, h1, h2):
                _ip("-n", ns, "link", "set", "lo", "up")
            # The workload hosts know the subnet through cp (no default route: nothing else
            # is reachable), and only cp forwards.
            _ip("-n", h1, "route", "add", SUBNET, "via", CP_TO_H1)
            _ip("-n", h2, "route", "add", SUBNET, "via", CP_TO_H2)
            # Set on every host: a new namespace may inherit the init namespace's value
            # (net.core.devconf_inherit_init_net), and the workload hosts must not route.
            for host, forward in (("cp", "1"), ("h1", "0"), ("h2", "0")):
                hosts.run(host, functools.partial(_write, IP_FORWARD, forward))
        except BaseException:
            for name in made:
                _delete(name)
            raise
        return hosts

    def run(self, host: str, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread inside ``host``'s namespace (its sockets are that host's)."""
        result: list[T] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                _setns(self.names[host])
                result.append(fn())
            except BaseException as exc:  # handed back to the caller's thread
                failure.append(exc)

        # A fresh thread each time: it dies in the namespace, so no thread is ever reused
        # in the wrong one.
        thread = threading.Thread(target=target, name=f"netns-{host}", daemon=True)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    def process(self, host: str, name: str, argv: Sequence[str], log: os.PathLike[str],
                ready: Callable[[], bool]) -> procs.ManagedProcess:
        """Start ``argv`` inside ``host`` (``ready`` is probed from inside it); tracked for
        ``destroy``. ``ip netns exec`` execs the command, so the handle is the process."""
        proc = procs.ManagedProcess(
            name=f"{name}@{host}", argv=["ip", "netns", "exec", self.names[host], *argv],
            log_path=Path(log), ready=lambda: self.run(host, ready))
        self.started.append(proc.start())
        return proc

    def destroy(self) -> None:
        """Stop every process started here (newest first), then delete the namespaces."""
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()
        for name in self.names.values():
            _delete(name)


def _write(path: str, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def _delete(name: str) -> None:
    """Delete namespace ``name`` (its veths go with it); already gone is fine."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
