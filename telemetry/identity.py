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

Trust (``verified_peer``): a peer's claims (header, filter state) are believed only when they
agree with the SPIFFE id of the certificate the connection verified; a certificate alone still
names the peer, through the ``PeerDirectory`` of workloads learned from the reporters' own
certificates, else by its service account.
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

# The names our generated Envoy configs use for peer headers, stashes and log tags are the wire
# contract's (one definition, shared with the config builders); re-exported for this package.
from envoy_mixer.common.wire import PEER_METADATA_HEADER as PEER_METADATA_HEADER
from envoy_mixer.common.wire import PEER_METADATA_ID_HEADER as PEER_METADATA_ID_HEADER
from envoy_mixer.common.wire import PEER_STASH_NAMESPACE as PEER_STASH_NAMESPACE
from envoy_mixer.common.wire import SERVICES_TAG as SERVICES_TAG
from envoy_mixer.common.wire import UPSTREAM_LOCAL_SAN_TAG as UPSTREAM_LOCAL_SAN_TAG
from envoy_mixer.common.wire import UPSTREAM_PEER_SAN_TAG as UPSTREAM_PEER_SAN_TAG

UNKNOWN = "unknown"
LATEST = "latest"

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
    # Istio's peer metadata names the service account; its SPIFFE form is the claimed principal
    # (checked against the certificate when one was verified, see verified_peer).
    principal = principal or metadata_principal(metadata, namespace)
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
    workload = workload_from_metadata(metadata, namespace_hint=ns_from_id)
    return NodeIdentity(
        node_id=node_id, node_type=node_type, workload=workload,
        metadata=MappingProxyType(dict(metadata)), log_name=log_name,
    )


def metadata_principal(metadata: Mapping[str, Any], namespace: str) -> str:
    """``spiffe://<TRUST_DOMAIN or cluster.local>/ns/<ns>/sa/<SERVICE_ACCOUNT>``, or ``""``."""
    account = _text(metadata.get("SERVICE_ACCOUNT"))
    if not account or not namespace:
        return ""
    trust_domain = _text(metadata.get("TRUST_DOMAIN")) or "cluster.local"
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}"


def spiffe_parts(principal: str) -> tuple[str, str]:
    """``(namespace, service account)`` of ``spiffe://td/ns/<ns>/sa/<sa>``; ``""`` when absent."""
    if not principal.startswith("spiffe://"):
        return "", ""
    parts = principal[len("spiffe://"):].split("/")
    namespace = account = ""
    for i in range(1, len(parts) - 1):
        if parts[i] == "ns" and not namespace:
            namespace = parts[i + 1]
        elif parts[i] == "sa" and not account:
            account = parts[i + 1]
    return namespace, account


def spiffe_namespace(principal: str) -> str:
    """The namespace in ``spiffe://td/ns/<ns>/sa/<sa>``, or ``""``."""
    return spiffe_parts(principal)[0]


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


@functools.lru_cache(maxsize=4096)
def workload_from_certificate(principal: str) -> WorkloadIdentity:
    """The peer as its certificate alone names it, when no workload is known for it.

    Namespace and principal come from the SPIFFE id. The workload and canonical service are the
    service account's name, the only workload-ish name a certificate carries (Istio's
    dashboards need a source_workload; a Deployment usually runs under an account of its own
    name). App and version stay ``unknown``, the revision ``latest``.
    """
    namespace, account = spiffe_parts(principal)
    return WorkloadIdentity(
        workload=account or UNKNOWN, namespace=namespace or UNKNOWN,
        canonical_service=account or UNKNOWN, principal=principal,
    )


def agrees_with_certificate(claimed: WorkloadIdentity, principal: str) -> bool:
    """True when a peer's claimed identity names the certificate's namespace and account.

    The namespace must match; the service account too when the claim names one (Istio's peer
    metadata carries ``SERVICE_ACCOUNT``; ours may not, then the namespace is all we can check).
    """
    namespace, account = spiffe_parts(principal)
    if not namespace or claimed.namespace != namespace:
        return False
    if claimed.principal == UNKNOWN:
        return True
    return spiffe_parts(claimed.principal) == (namespace, account)


class PeerDirectory:
    """Workloads by SPIFFE principal, learned from the reporters' own certificates.

    Each reporting sidecar knows its workload (node metadata) and logs its own certificate (the
    local SAN, downstream or upstream), so every entry teaches ``principal -> workload`` from a
    source no peer controls. A principal shared by two workloads (several Deployments under one
    service account) is ambiguous and resolves to nothing, so it is never guessed. Bounded: at
    ``max_entries`` the oldest principal is forgotten first.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._known: dict[str, WorkloadIdentity | None] = {}
        #: (namespace, workload) -> the principal it was learned under.
        self._principals: dict[tuple[str, str], str] = {}

    def learn(self, principal: str, workload: WorkloadIdentity) -> None:
        """Record that the workload ``workload`` holds a certificate for ``principal``."""
        if not principal or workload.workload == UNKNOWN:
            return
        known = self._known
        if principal in known:
            current = known[principal]
            if current is not None and current is not workload and (
                    current.workload, current.namespace) != (workload.workload,
                                                             workload.namespace):
                known[principal] = None  # two workloads share it: ambiguous from now on
            return
        if len(known) >= self.max_entries:
            oldest = next(iter(known))
            gone = known.pop(oldest)
            if gone is not None:
                self._principals.pop((gone.namespace, gone.workload), None)
        known[principal] = workload
        self._principals[(workload.namespace, workload.workload)] = principal

    def lookup(self, principal: str) -> WorkloadIdentity | None:
        """The one workload known for ``principal`` (with that principal), or None."""
        found = self._known.get(principal)
        if found is None:
            return None
        if found.principal != principal:
            found = WorkloadIdentity(
                workload=found.workload, namespace=found.namespace, app=found.app,
                version=found.version, canonical_service=found.canonical_service,
                canonical_revision=found.canonical_revision, cluster=found.cluster,
                principal=principal,
            )
            self._known[principal] = found
        return found

    def contradicts(self, claimed: WorkloadIdentity, principal: str) -> bool:
        """True when what we learned says ``claimed`` is not the holder of ``principal``.

        Either the principal belongs to another workload, or the claimed workload was seen
        under another principal: a peer cannot borrow a known neighbour's name.
        """
        known = self._known.get(principal)
        if known is not None and (known.workload, known.namespace) != (
                claimed.workload, claimed.namespace):
            return True
        elsewhere = self._principals.get((claimed.namespace, claimed.workload))
        return elsewhere is not None and elsewhere != principal

    def __len__(self) -> int:
        return len(self._known)


def verified_peer(
    claimed: WorkloadIdentity | None, principal: str, directory: PeerDirectory | None = None,
    *, inbound: bool = True,
) -> WorkloadIdentity:
    """The peer of a connection whose certificate verified as ``principal``.

    A claim (peer-metadata header, filter state) is believed, with the certificate's principal,
    only when it names the certificate's namespace (and account, when it names one) and the
    directory does not contradict it (a workload it knows under another principal, or another
    workload for this one). Inbound, where anyone holding a mesh certificate can dial a
    sidecar, a claim must also be tied to the certificate: by naming its account, or by naming
    the workload the directory knows for the principal. Outbound the client picked the upstream
    and checked its SAN, so an agreeing claim suffices. Anything else is forged or stale and
    ignored: the directory's workload for the principal is used, else what the certificate
    alone says (``workload_from_certificate``). Without a directory only the namespace and
    account are checked.
    """
    known = directory.lookup(principal) if directory is not None else None
    if claimed is not None and agrees_with_certificate(claimed, principal):
        if directory is None:
            return with_principal(claimed, principal)
        tied = not inbound or claimed.principal != UNKNOWN or (
            known is not None
            and (known.workload, known.namespace) == (claimed.workload, claimed.namespace))
        if tied and not directory.contradicts(claimed, principal):
            return with_principal(claimed, principal)
    return known if known is not None else workload_from_certificate(principal)
