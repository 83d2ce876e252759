"""``mixer proxy-status`` (see :mod:`controlplane.xds.cli`)."""

from controlplane.xds.cli import register_proxy_status as register

__all__ = ["register"]
