"""Mesh -> per-proxy xDS resources: what ``mixer pilot`` gives each Envoy (pure functions).

- :mod:`.proxy`: which proxies the mesh has (one per WorkloadEntry), their role, identity and
  Istio node id;
- :mod:`.clusters`, :mod:`.endpoints`: ``outbound|PORT|SUBSET|HOST`` clusters with the
  DestinationRule's traffic policy, and their EDS endpoints from ServiceEntry/WorkloadEntry;
- :mod:`.routes`: VirtualService ``http[]`` -> Envoy routes;
- :mod:`.listeners`: a Sidecar's ingress and egress listeners (captureMode NONE), a gateway's
  servers, each wired to ext_authz, RLS and ALS as the static configs are;
- :mod:`.tls`: upstream and downstream TLS contexts (ISTIO_MUTUAL over SDS);
- :mod:`.secrets`: the SDS ``default`` and ``ROOTCA`` secrets of a workload;
- :mod:`.generate`: all of it for one proxy, or for every proxy of a mesh.

Nothing here knows gRPC or the xDS protocol; the typed pieces come from
:mod:`controlplane.envoy` wherever a builder there fits.
"""

from controlplane.pilot.generate import Context, ProxyResources, generate, generate_all
from controlplane.pilot.proxy import Proxy, proxies

__all__ = ["Context", "Proxy", "ProxyResources", "generate", "generate_all", "proxies"]
