"""The one way a service process runs, and the one way its command line fails.

Every service's ``cli.py`` ends the same way::

    def run_command(args: argparse.Namespace) -> int:
        settings = ServerSettings.from_args("ratelimit", args)
        app_settings = ...                       # the service's own frozen settings
        return serve("ratelimit", settings, lambda: build(app_settings).service)

:func:`serve` configures logging from ``settings.log_level``, builds the ``Service`` (inside the
event loop, so clients that need one can be created), starts it, runs until SIGTERM/SIGINT,
drains for ``settings.grace_seconds`` and returns the exit code:

- ``0`` after a clean shutdown;
- ``1`` when a listener cannot be bound (logged as ``bind_failed``);
- ``2`` (:data:`EXIT_USAGE`) for a setting the service cannot use: ``build`` raised
  :class:`~envoy_mixer.runtime.settings.SettingError`. The message goes to stderr as one line,
  ``<prog>: <message>``, never a traceback.

A CLI that finds a bad setting itself, before serving, calls :func:`usage_error` for the same
line and exit code. Flag values (and their environment fallbacks) that fail argparse's ``type``
conversion already end that way: argparse prints the usage and the error to stderr, exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from envoy_mixer.common.logs import configure_logging
from envoy_mixer.runtime.settings import ServerSettings, SettingError

if TYPE_CHECKING:
    from envoy_mixer.runtime.service import Service

__all__ = ["EXIT_USAGE", "SettingError", "serve", "usage_error"]

#: Exit code for bad flags or settings (argparse's own code for usage errors).
EXIT_USAGE = 2


def usage_error(prog: str, message: str, *, stream: TextIO | None = None) -> int:
    """Print ``<prog>: <message>`` to stderr (or ``stream``) and return :data:`EXIT_USAGE`."""
    print(f"{prog}: {message}", file=stream if stream is not None else sys.stderr)
    return EXIT_USAGE


def serve(
    name: str, settings: ServerSettings, build: Callable[[], Service], *, prog: str | None = None
) -> int:
    """Log per ``settings``, build the service, serve until SIGTERM/SIGINT; the exit code.

    ``name`` is the service (``ratelimit``, ``telemetry``, ``authz``); ``build`` returns its
    ``envoy_mixer.runtime.service.Service`` and may raise ``SettingError`` for a setting it
    rejects; ``prog`` prefixes that error (default ``mixer <name>``).
    """
    # Imported here: the CLI modules import this one, and `mixer --help` must not load grpc.
    from envoy_mixer.runtime.service import run

    configure_logging(settings.log_level)
    try:
        return run(build, settings)
    except SettingError as exc:
        return usage_error(prog or f"mixer {name}", str(exc))
