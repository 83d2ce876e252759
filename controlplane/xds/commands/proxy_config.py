"""``mixer proxy-config`` (see :mod:`controlplane.xds.cli`)."""

from controlplane.xds.cli import register_proxy_config as register

__all__ = ["register"]
