"""The wire contract between the Envoy configs we generate and the services that read them.

Everything both sides must spell the same lives here, once: the peer-metadata header names,
the dynamic-metadata namespaces and access-log tags our configs fill, Istio's cluster and node
naming, and SPIFFE identities. The config builders (``controlplane.envoy``) write these names;
the services (``extauthz``, ``telemetry``) read them. A rename here moves both sides together.
"""

from __future__ import annotations

from typing import NamedTuple

# ---------------------------------------------------------------------------- headers

#: Base64 of compact JSON with the workload's Istio node metadata, set by every sidecar and
#: gateway on requests (client side) and responses (server side).
PEER_METADATA_HEADER = "x-mixer-peer-metadata"
#: The sender's Istio node id, beside :data:`PEER_METADATA_HEADER`.
PEER_METADATA_ID_HEADER = "x-mixer-peer-metadata-id"
#: Both peer headers, for configs that strip or stash them.
PEER_HEADERS = (PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER)
#: Set by Envoy itself (overwriting any client copy) to carry the physical peer address into
#: dynamic metadata before ext_authz runs; removed before the upstream.
DIRECT_PEER_HEADER = "x-mixer-direct-remote-address"

# ---------------------------------------------------------------------------- metadata, tags

#: Dynamic-metadata namespace where gateways and outbound sidecars stash the peer response
#: headers they remove from the client's response (ALS copies it into every entry).
PEER_STASH_NAMESPACE = "mixer.peer_response"
#: Dynamic-metadata namespace ext_authz receives (``metadata_context_namespaces``).
AUTHZ_METADATA_NAMESPACE = "envoy_mixer"
#: Key under :data:`AUTHZ_METADATA_NAMESPACE`: the physical peer IP (Istio's direct_remote_ip).
DIRECT_REMOTE_IP_KEY = "direct_remote_ip"
#: Access-log custom tag with the upstream cluster's ``istio.services`` metadata (JSON).
SERVICES_TAG = "istio.services"
#: Access-log custom tags with the upstream connection's URI SANs (ALS logs only downstream TLS).
UPSTREAM_PEER_SAN_TAG = "upstream_peer_uri_san"
UPSTREAM_LOCAL_SAN_TAG = "upstream_local_uri_san"

# ---------------------------------------------------------------------------- cluster names

INBOUND = "inbound"
OUTBOUND = "outbound"


class ClusterName(NamedTuple):
    """Istio's ``DIRECTION|PORT|SUBSET|HOST`` cluster name, split."""

    direction: str
    port: int
    subset: str
    host: str

    def __str__(self) -> str:
        return f"{self.direction}|{self.port}|{self.subset}|{self.host}"


def inbound_cluster(port: int) -> str:
    """``inbound|PORT||``: the local app behind a sidecar's inbound listener."""
    return str(ClusterName(INBOUND, port, "", ""))


def outbound_cluster(port: int, host: str, subset: str = "") -> str:
    """``outbound|PORT|SUBSET|HOST``: a destination service (the subset may be empty)."""
    return str(ClusterName(OUTBOUND, port, subset, host))


def parse_cluster(name: str) -> ClusterName | None:
    """Split an Istio cluster name; None for any other name (ours, BlackHole, a typo)."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] not in (INBOUND, OUTBOUND) or not parts[1].isdigit():
        return None
    return ClusterName(parts[0], int(parts[1]), parts[2], parts[3])


# ---------------------------------------------------------------------------- SPIFFE

SPIFFE_SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"


def spiffe_uri(trust_domain: str, namespace: str, service_account: str) -> str:
    """``spiffe://<td>/ns/<ns>/sa/<sa>``: a workload's identity as certificates carry it."""
    return f"{SPIFFE_SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe(uri: str) -> tuple[str, str, str] | None:
    """``(trust_domain, namespace, service_account)`` of an exact workload URI; None otherwise.

    Exact on purpose: extra segments, an empty part or a missing scheme do not name a workload
    (policy matching has its own, Istio-shaped patterns; this is for identities we issue and
    check). ``controlplane.ca.identity.SpiffeId`` adds Kubernetes' naming rules on top.
    """
    if not uri.startswith(SPIFFE_SCHEME):
        return None
    parts = uri[len(SPIFFE_SCHEME):].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts[::2]):
        return None
    return parts[0], parts[2], parts[4]


# ---------------------------------------------------------------------------- node ids

class NodeId(NamedTuple):
    """Istio's proxy node id ``TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN``, split."""

    proxy_type: str
    ip: str
    pod: str
    namespace: str
    domain: str

    def __str__(self) -> str:
        return (f"{self.proxy_type}~{self.ip}~{self.pod}.{self.namespace}"
                f"~{self.namespace}.svc.{self.domain}")


def parse_node_id(node_id: str) -> NodeId | None:
    """Split an Istio node id; None when it does not have Istio's four ``~`` parts."""
    parts = node_id.split("~")
    if len(parts) != 4:
        return None
    proxy_type, ip, pod_ns, dns = parts
    pod, _, namespace = pod_ns.rpartition(".")
    ns_from_dns, sep, domain = dns.partition(".svc.")
    if not pod or not namespace or not sep or ns_from_dns != namespace:
        return None
    return NodeId(proxy_type, ip, pod, namespace, domain)
