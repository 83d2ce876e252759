"""xDS type URLs, the order they are pushed in, and which of them are wildcard (SotW)."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Make before break (Istio's PushOrder): clusters, their endpoints, then what uses them.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: LDS and CDS are requested with no names and are the whole state of the world; the others
#: are requested by name and only those names may be sent.
WILDCARD: frozenset[str] = frozenset({CLUSTER, LISTENER})

#: Short names for humans (``mixer proxy-status`` columns, ``proxy-config`` kinds).
SHORT: dict[str, str] = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS",
                         SECRET: "SDS"}
KINDS: dict[str, str] = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER,
                         "routes": ROUTE, "secrets": SECRET}
