"""Who holds a TCP port: real sockets in this process, and the /proc table format."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from envoy_mixer.dev.ports import describe_port, port_holders, socket_inodes

# ports.py reads /proc/net/tcp and /proc/*/fd, which exist only on Linux (CI is Linux).
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")


@linux
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                               (socket.AF_INET6, "::1")])
def test_a_listening_socket_is_found_with_its_pid(family: socket.AddressFamily,
                                                  host: str) -> None:
    """A socket listening in this process is traced to this process's pid and command line."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
    except OSError:
        # Some hosts (e.g. containers with IPv6 disabled) have no ::1 to bind; the IPv4 case
        # still runs there, and CI machines have both.
        pytest.skip(f"no {host} on this machine")
    with sock:
        sock.listen()
        port = sock.getsockname()[1]
        holders = port_holders(port)
        assert [h.pid for h in holders] == [os.getpid()]
        assert holders[0].cmdline[0] == Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(
            b"\0")[0].decode()
        assert describe_port(port, "authz gRPC").startswith(
            f"port {port} (authz gRPC) is held by pid {os.getpid()} (")


@linux
def test_a_free_port_has_no_holder() -> None:
    """Once the socket is closed, nobody holds the port and the message says only 'in use'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
    assert port_holders(port) == []
    assert describe_port(port, "ingress gateway") == f"port {port} (ingress gateway) is in use"


def test_connected_and_time_wait_sockets_do_not_count(tmp_path: Path) -> None:
    """Only LISTEN sockets are holders; established ones and TIME_WAIT (inode 0) are not."""
    net = tmp_path / "net"
    net.mkdir()
    header = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
              "   uid  timeout inode")
    rows = [
        "0: 0100007F:23E7 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 111 1",
        "1: 0100007F:23E7 0100007F:C350 01 00000000:00000000 00:00000000 00000000 1000 0 222 1",
        "2: 0100007F:23E7 0100007F:C351 06 00000000:00000000 03:00000000 00000000 0 0 0 3",
        "3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 1000 0 333 1",
    ]
    (net / "tcp").write_text("\n".join([header, *rows]) + "\n")
    assert socket_inodes(0x23E7, tmp_path) == {111}
    # The socket is there but no /proc/PID of this fake tree holds it: said, not hidden.
    assert "cannot inspect" in describe_port(0x23E7, "authz gRPC", tmp_path)
