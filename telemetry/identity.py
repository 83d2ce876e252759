"""Workload identities: the reporting node (from its bootstrap) and the peer (from what Envoy logs).

Conventions (COMMON.md "Cross-helper contracts", the same keys Istio uses):

* node ``id`` = ``<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>``; ``metadata`` carries
  ``NAME``, ``NAMESPACE``, ``WORKLOAD_NAME``, ``CLUSTER_ID`` and ``LABELS`` (``app``,
  ``version``, ``service.istio.io/canonical-name``, ``service.istio.io/canonical-revision``).
* the peer arrives as ``x-mixer-peer-metadata`` (base64 of compact JSON with the same keys) in
  request headers (server side) or response headers (client side), as Istio ≥1.24 filter state
  (``downstream_peer``/``upstream_peer``), and/or as the mTLS URI SAN
  (``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``).

Every value that cannot be found is ``unknown``; a missing canonical revision is ``latest``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

UNKNOWN = "unknown"
LATEST = "latest"

PEER_METADATA_HEADER = "x-mixer-peer-metadata"
PEER_METADATA_ID_HEADER = "x-mixer-peer-metadata-id"
#: Where the shipped gateways/outbound sidecars stash the peer response headers they strip
#: from the client's response (Envoy dynamic metadata, copied into every ALS entry).
PEER_STASH_NAMESPACE = "mixer.peer_response"
#: The access-log custom tag carrying the upstream cluster's ``istio.services`` metadata
#: (Istio's per-cluster service list, JSON): where destination_service comes from, as in Istio.
SERVICES_TAG = "istio.services"

_CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_CANONICAL_REVISION_LABELS = (
    "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version",
)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """The Istio-visible identity of one side of a request."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = LATEST
    cluster: str = UNKNOWN
    principal: str = UNKNOWN


UNKNOWN_WORKLOAD = WorkloadIdentity()


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """The reporting Envoy: its kind (``sidecar``, ``router``, ``waypoint``) and workload."""

    node_id: str = ""
    node_type: str = ""
    workload: WorkloadIdentity = UNKNOWN_WORKLOAD
    #: The node metadata as sent (for labels added from node metadata).
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    log_name: str = ""


UNKNOWN_NODE = NodeIdentity()


def _text(value: Any) -> str:
    """A metadata value as a non-empty string, or ``""``."""
    if value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # protobuf Struct numbers are doubles
    return str(value)


def _first_label(labels: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = _text(labels.get(key))
        if value:
            return value
    return ""


def workload_from_metadata(
    metadata: Mapping[str, Any], *, principal: str = "", namespace_hint: str = ""
) -> WorkloadIdentity:
    """Build an identity from Istio-style metadata keys (node metadata or peer header JSON)."""
    raw_labels = metadata.get("LABELS")
    labels: Mapping[str, Any] = raw_labels if isinstance(raw_labels, Mapping) else _EMPTY
    workload = _text(metadata.get("WORKLOAD_NAME"))
    namespace = _text(metadata.get("NAMESPACE")) or namespace_hint
    canonical = _first_label(labels, _CANONICAL_NAME_LABELS) or workload
    return WorkloadIdentity(
        workload=workload or UNKNOWN,
        namespace=namespace or UNKNOWN,
        app=_text(labels.get("app")) or UNKNOWN,
        version=_text(labels.get("version")) or UNKNOWN,
        canonical_service=canonical or UNKNOWN,
        canonical_revision=_first_label(labels, _CANONICAL_REVISION_LABELS) or LATEST,
        cluster=_text(metadata.get("CLUSTER_ID")) or UNKNOWN,
        principal=principal or UNKNOWN,
    )


def parse_node_id(node_id: str) -> tuple[str, str, str]:
    """``sidecar~ip~pod.ns~ns.svc.cluster.local`` -> ``("sidecar", "pod", "ns")``.

    Parts that are absent come back as ``""``.
    """
    parts = node_id.split("~")
    if len(parts) != 4:
        return "", "", ""
    node_type, _ip, pod_ns, domain = parts
    pod, _, ns = pod_ns.rpartition(".")
    if not pod:
        pod, ns = pod_ns, ""
    return node_type, pod, ns or domain.split(".", 1)[0]


def node_identity(
    node_id: str, metadata: Mapping[str, Any], *, log_name: str = ""
) -> NodeIdentity:
    """The reporter's identity from its node id and metadata.

    The local principal comes from ``SERVICE_ACCOUNT`` (Istio's key) when the node sets it, in
    the SPIFFE form Istio uses for the default trust domain.
    """
    node_type, _pod, ns_from_id = parse_node_id(node_id)
    account = _text(metadata.get("SERVICE_ACCOUNT"))
    namespace = _text(metadata.get("NAMESPACE")) or ns_from_id
    trust_domain = _text(metadata.get("TRUST_DOMAIN")) or "cluster.local"
    principal = (
        f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}" if account and namespace else "")
    workload = workload_from_metadata(metadata, principal=principal, namespace_hint=ns_from_id)
    return NodeIdentity(
        node_id=node_id, node_type=node_type, workload=workload,
        metadata=MappingProxyType(dict(metadata)), log_name=log_name,
    )


def spiffe_namespace(principal: str) -> str:
    """The namespace in ``spiffe://td/ns/<ns>/sa/<sa>``, or ``""``."""
    if not principal.startswith("spiffe://"):
        return ""
    parts = principal[len("spiffe://"):].split("/")
    for i in range(1, len(parts) - 1):
        if parts[i] == "ns":
            return parts[i + 1]
    return ""


@functools.lru_cache(maxsize=4096)
def decode_peer_header(value: str) -> WorkloadIdentity | None:
    """Decode an ``x-mixer-peer-metadata`` value; None when it is not base64 JSON of a mapping.

    Cached: a mesh has few distinct peers, and the same header value repeats on every request.
    """
    text = value.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        # Accept both alphabets: the contract says standard base64, some clients send URL-safe.
        raw = base64.urlsafe_b64decode(padded) if ("-" in text or "_" in text) else (
            base64.b64decode(padded, validate=True))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return workload_from_metadata(data)


def encode_peer_header(metadata: Mapping[str, Any]) -> str:
    """The ``x-mixer-peer-metadata`` value for ``metadata`` (compact JSON, standard base64)."""
    text = json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)
    return base64.b64encode(text.encode()).decode()


def workload_from_peer_state(state: Mapping[str, Any]) -> WorkloadIdentity:
    """Identity from Istio ≥1.24 peer filter state (``workload``, ``namespace``, ``service`` …)."""
    workload = _text(state.get("workload"))
    return WorkloadIdentity(
        workload=workload or UNKNOWN,
        namespace=_text(state.get("namespace")) or UNKNOWN,
        app=_text(state.get("app")) or UNKNOWN,
        version=_text(state.get("version")) or UNKNOWN,
        canonical_service=_text(state.get("service")) or workload or UNKNOWN,
        canonical_revision=_text(state.get("revision")) or LATEST,
        cluster=_text(state.get("cluster")) or UNKNOWN,
        principal=_text(state.get("identity")) or UNKNOWN,
    )


def with_principal(identity: WorkloadIdentity, principal: str) -> WorkloadIdentity:
    """``identity`` with the mTLS ``principal``; the SAN's namespace wins, as in Istio."""
    if not principal:
        return identity
    namespace = spiffe_namespace(principal) or identity.namespace
    if principal == identity.principal and namespace == identity.namespace:
        return identity
    return WorkloadIdentity(
        workload=identity.workload, namespace=namespace, app=identity.app,
        version=identity.version, canonical_service=identity.canonical_service,
        canonical_revision=identity.canonical_revision, cluster=identity.cluster,
        principal=principal,
    )
