"""Envoy configuration as typed messages (``xds-protos``), for static files and for xDS.

One generator is shared by ``mixer up``, docker-compose, the checked-in ``envoy-configs/``
files and users' own proxies, so they cannot drift apart. Every builder returns protobuf
messages (``Bootstrap``, ``Listener``, ``Cluster``, ``RouteConfiguration``, ``HttpFilter``...);
YAML exists only at the edge (:mod:`.render`). Modules:

- :mod:`.model`: who a proxy is (``Workload``) and whom it calls (``MixerServices``,
  ``Upstream``); plain values, no protos.
- :mod:`.core`: addresses, durations, ``Any`` packing, ``envoy_grpc`` services.
- :mod:`.clusters`, :mod:`.filters`, :mod:`.routes`, :mod:`.listeners`, :mod:`.bootstrap`:
  the pieces, one kind of Envoy resource each.
- :mod:`.ratelimit_actions`: route ``rate_limits`` actions derived from the ratelimit config.
- :mod:`.roles`: ``sidecar``, ``ingress_gateway``, ``egress_gateway`` composing the pieces.
- :mod:`.mesh`: the demo mesh topology for ``mixer up``, the shipped files and compose.
- :mod:`.render`, :mod:`.shipped`, :mod:`.snippets`, :mod:`.cli`: YAML, the checked-in files,
  ``--snippets`` and ``mixer envoy-config``.
"""

from __future__ import annotations

from controlplane.envoy.model import Endpoint, MixerServices, ProxyOptions, Upstream, Workload
from controlplane.envoy.render import message_to_data, to_yaml
from controlplane.envoy.roles import (
    RoleResources,
    egress_gateway,
    egress_gateway_resources,
    ingress_gateway,
    ingress_gateway_resources,
    sidecar,
    sidecar_resources,
)

__all__ = [
    "Endpoint",
    "MixerServices",
    "ProxyOptions",
    "RoleResources",
    "Upstream",
    "Workload",
    "egress_gateway",
    "egress_gateway_resources",
    "ingress_gateway",
    "ingress_gateway_resources",
    "message_to_data",
    "sidecar",
    "sidecar_resources",
    "to_yaml",
]
