"""``mixer pilot`` (see :mod:`controlplane.xds.cli`)."""

from controlplane.xds.cli import register_pilot as register

__all__ = ["register"]
