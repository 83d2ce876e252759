"""``mixer envoy-config-xds`` (see :mod:`controlplane.xds.cli`)."""

from controlplane.xds.cli import register_envoy_config as register

__all__ = ["register"]
