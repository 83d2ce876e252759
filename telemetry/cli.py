"""``mixer telemetry [--config PATH] [--listen HOST:PORT] [--admin HOST:PORT]``.

Also ``python -m telemetry`` with the same flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envoy_mixer.runtime.settings import ServerSettings, add_server_arguments, env_default

DEFAULT_LISTEN = "127.0.0.1:9401"
DEFAULT_ADMIN = "127.0.0.1:9402"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The telemetry flags (shared by ``mixer telemetry`` and ``python -m telemetry``)."""
    parser.add_argument(
        "--config", type=Path, default=env_default("telemetry", "config", None), metavar="PATH",
        help="telemetry config YAML (file or directory); built-in defaults when omitted "
             "(env MIXER_TELEMETRY_CONFIG)",
    )
    add_server_arguments(parser, service="telemetry", listen=DEFAULT_LISTEN, admin=DEFAULT_ADMIN)


def handle(args: argparse.Namespace) -> int:
    """Run the telemetry service until SIGTERM/SIGINT; returns the exit code."""
    # Imported late: registering `mixer telemetry` must not load grpc (`mixer --help`).
    from envoy_mixer.runtime.serve import serve
    from telemetry.app import build

    config = Path(args.config) if args.config else None
    return serve("telemetry", ServerSettings.from_args("telemetry", args),
                 lambda: build(config).service)


def register(subparsers: Any) -> None:
    """Add ``mixer telemetry``."""
    parser = subparsers.add_parser(
        "telemetry",
        help="Envoy access-log service: Istio standard metrics, access logs, service graph",
        description="Serve envoy.service.accesslog.v3.AccessLogService and expose Istio's "
                    "standard metrics on the admin port's /metrics, the service graph on /graph.",
    )
    add_arguments(parser)
    parser.set_defaults(func=handle)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m telemetry``."""
    parser = argparse.ArgumentParser(prog="python -m telemetry", description=(
        "Envoy access-log service: Istio standard metrics, access logs, service graph."))
    add_arguments(parser)
    return handle(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
