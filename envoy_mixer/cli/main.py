"""The ``mixer`` command: one entry point for every service and tool.

Each subcommand lives in its own provider module exposing ``register(subparsers)``, which adds
a parser whose ``func`` default takes the parsed args and returns the exit code.

Only the provider of the command being run is imported. ``mixer --help`` (and an unknown or
missing command) imports none: the top-level listing comes from :data:`COMMANDS`, one line of
help per command, so it needs neither grpc nor pydantic nor the protobuf stubs that the
providers' packages load. A test keeps that listing identical to the one the providers
register, and a provider that cannot be imported, or does not register its command, is an
error (never silently skipped).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envoy_mixer import __version__


@dataclass(frozen=True, slots=True)
class Command:
    """One ``mixer`` subcommand: its name, the module registering it, its one-line help."""

    name: str
    module: str
    help: str


#: Every subcommand, in ``--help`` order.
COMMANDS: tuple[Command, ...] = (
    Command("up", "envoy_mixer.dev.up",
            "start a local demo mesh (Envoys, demo apps, the three services)"),
    Command("ratelimit", "ratelimit.cli", "run the rate limit service (Envoy RLS)"),
    Command("authz", "extauthz.cli",
            "ext_authz policy service (Istio AuthorizationPolicy/RequestAuthentication)"),
    Command("telemetry", "telemetry.cli",
            "Envoy access-log service: Istio standard metrics, access logs, service graph"),
    Command("envoy-config", "controlplane.envoy.cli",
            "generate Envoy configs (sidecar, ingress, egress) or snippets"),
    Command("check", "envoy_mixer.cli.check",
            "validate policy, rate-limit and telemetry config files"),
    Command("analyze", "controlplane.mesh.cli",
            "validate a mesh directory of Istio files and analyze it across files"),
    Command("ca", "controlplane.ca.cli",
            "mesh certificate authority (Istio's Citadel): SPIFFE workload certificates"),
    Command("pilot", "controlplane.xds.commands.pilot",
            "the xDS control plane (Istio's Pilot): serve each Envoy of the mesh over ADS"),
    Command("envoy-config-xds", "controlplane.xds.commands.envoy_config_xds",
            "the minimal bootstrap of an Envoy served by mixer pilot"),
    Command("proxy-status", "controlplane.xds.commands.proxy_status",
            "every proxy connected to mixer pilot, per type SYNCED/STALE/NACKED"),
    Command("proxy-config", "controlplane.xds.commands.proxy_config",
            "what mixer pilot pushed to a proxy (listeners, routes, clusters, ...)"),
)

#: The provider modules, in ``--help`` order.
COMMAND_MODULES: tuple[str, ...] = tuple(c.module for c in COMMANDS)


class ProviderError(RuntimeError):
    """A command's provider module did not register the command it is listed for."""


def register_provider(command: Command, subparsers: Any) -> None:
    """Import ``command``'s provider and let it add its parser to ``subparsers``.

    ``ModuleNotFoundError`` propagates as is: a listed command whose module is gone is a
    broken install, not something to hide from ``mixer --help``.
    """
    module = importlib.import_module(command.module)
    module.register(subparsers)
    if command.name not in subparsers.choices:
        raise ProviderError(f"{command.module}.register() did not add 'mixer {command.name}'")


def build_parser(
    only: str | None = None, commands: Sequence[Command] = COMMANDS
) -> argparse.ArgumentParser:
    """The ``mixer`` parser.

    ``only=None`` registers every command through its provider (the full parser, what tests
    and completion tools want). ``only=NAME`` imports just that command's provider and lists
    the others from ``commands``, so they show in ``--help`` at no import cost.
    """
    parser = argparse.ArgumentParser(
        prog="mixer",
        description="Istio's policy, quota and telemetry for any Envoy, without Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands:
        if only is None or command.name == only:
            register_provider(command, sub)
        else:
            sub.add_parser(command.name, help=command.help)
    return parser


def chosen_command(argv: Sequence[str], commands: Sequence[Command] = COMMANDS) -> str:
    """The subcommand ``argv`` runs ('' for none): its first word, the top level having only
    ``--help`` and ``--version``, which take no value."""
    names = {c.name for c in commands}
    for word in argv:
        if not word.startswith("-"):
            return word if word in names else ""
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=chosen_command(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
