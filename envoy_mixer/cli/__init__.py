"""The ``mixer`` command: thin wiring over the services, the control plane and ``mixer up``."""

from envoy_mixer.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
