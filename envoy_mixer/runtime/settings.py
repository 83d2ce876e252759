"""Process settings: CLI flags with environment-variable fallbacks, read once.

Every service takes ``--listen``, ``--admin`` and ``--log-level``; the environment fallback of a
flag is ``MIXER_<SERVICE>_<FLAG>`` (e.g. ``MIXER_RATELIMIT_LISTEN``), then ``MIXER_<FLAG>`` for
the settings every service shares (``MIXER_LOG_LEVEL``).

An environment value goes through the same ``type`` check as the flag it stands in for
(argparse converts string defaults), so ``MIXER_RATELIMIT_GRACE=abc`` fails like
``--grace abc``: one line on stderr naming the flag, exit 2. A setting found wrong later, while
the service is built, is a :class:`SettingError` (see ``envoy_mixer.runtime.serve``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from envoy_mixer.common.errors import MixerError

LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingError(MixerError, ValueError):
    """A process setting (flag or environment value) the service cannot use.

    Also a ``ValueError``, so argparse ``type`` functions may raise it directly.
    """


def env_default(service: str, flag: str, default: str | None) -> str | None:
    """The environment fallback for ``--flag`` of ``service`` (or ``default``)."""
    name = flag.upper().replace("-", "_")
    specific = os.environ.get(f"MIXER_{service.upper()}_{name}")
    return specific if specific is not None else os.environ.get(f"MIXER_{name}", default)


def split_hostport(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8081"`` -> ``("127.0.0.1", 8081)``; ``":8081"`` binds every address."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SettingError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def hostport(value: str) -> str:
    """argparse ``type`` for ``HOST:PORT`` flags: the value, checked."""
    try:
        split_hostport(value)
    except SettingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def log_level(value: str) -> str:
    """argparse ``type`` for ``--log-level``: one of :data:`LOG_LEVELS`, any case."""
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid log level {value!r} (one of {', '.join(LOG_LEVELS)})")
    return level


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where a service listens and how it logs."""

    service: str
    listen: str
    admin: str
    log_level: str = "info"
    grace_seconds: float = 5.0

    @classmethod
    def from_args(cls, service: str, args: argparse.Namespace) -> ServerSettings:
        """Build from the flags added by ``add_server_arguments``."""
        split_hostport(args.listen)
        split_hostport(args.admin)
        return cls(
            service=service,
            listen=args.listen,
            admin=args.admin,
            log_level=args.log_level,
            grace_seconds=float(args.grace),
        )


def add_server_arguments(
    parser: argparse.ArgumentParser, *, service: str, listen: str, admin: str
) -> None:
    """Add ``--listen``, ``--admin``, ``--log-level`` and ``--grace`` with env fallbacks."""
    parser.add_argument(
        "--listen", default=env_default(service, "listen", listen), metavar="HOST:PORT",
        type=hostport,
        help=f"gRPC address (default {listen}; env MIXER_{service.upper()}_LISTEN)",
    )
    parser.add_argument(
        "--admin", default=env_default(service, "admin", admin), metavar="HOST:PORT",
        type=hostport,
        help=f"admin HTTP address for /metrics, /healthz, /config (default {admin})",
    )
    parser.add_argument(
        "--log-level", default=env_default(service, "log-level", "info"), type=log_level,
        choices=LOG_LEVELS, help="log level (env MIXER_LOG_LEVEL)",
    )
    parser.add_argument(
        "--grace", default=env_default(service, "grace", "5"), type=float, metavar="SECONDS",
        help="drain time on SIGTERM before in-flight calls are cancelled (default 5)",
    )
