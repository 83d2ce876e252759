"""The ``mixer`` command: one entry point for every service and tool.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser
whose ``func`` default takes the parsed args and returns the exit code. Modules are listed here
so ``mixer --help`` shows them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from envoy_mixer import __version__

#: (module, description) of every subcommand provider, in ``--help`` order.
COMMAND_MODULES: tuple[str, ...] = (
    "envoy_mixer.dev.up",            # mixer up
    "ratelimit.cli",             # mixer ratelimit
    "extauthz.cli",              # mixer authz
    "telemetry.cli",             # mixer telemetry
    "controlplane.envoy.cli",    # mixer envoy-config
    "envoy_mixer.cli.check",         # mixer check
    "controlplane.mesh.cli",     # mixer analyze
    "controlplane.ca.cli",       # mixer ca
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``mixer`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mixer",
        description="Istio's policy, quota and telemetry for any Envoy, without Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only a provider that does not exist yet is skipped; a broken import inside one
            # must surface.
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
