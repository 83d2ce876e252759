"""House rules for the CA and security packages."""

from __future__ import annotations

import subprocess
import sys


def test_ca_and_security_import_neither_grpc_nor_envoy() -> None:
    """Every module of controlplane.ca and controlplane.security loads no grpc or envoy.*."""
    code = (
        "import sys, controlplane.ca, controlplane.ca.cli, controlplane.security\n"
        "bad = [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'envoy.'))]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mixer_ca_is_a_registered_command() -> None:
    """``mixer ca`` parses with its three subcommands."""
    from envoy_mixer.cli import build_parser

    parser = build_parser()
    for sub in ("init", "issue --namespace a --service-account b", "rotate --namespace a "
                "--service-account b"):
        args = parser.parse_args(["ca", *sub.split()])
        assert args.command == "ca" and args.ca_command == sub.split()[0]
