"""The request as the policy engine sees it: plain data, no protobuf.

``AuthzRequest`` is what the servicer builds from a ``CheckRequest`` and what ``explain`` and
``test`` build from flags and YAML, so all three go through the same engine. The query string
is split off the path here, once: Istio never matches paths against the query.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_LINES: Mapping[str, tuple[str, ...]] = MappingProxyType({})
_LABEL_PREFIX = "label."


class AuthzRequest(NamedTuple):
    """One HTTP request to authorize.

    ``headers`` keys are lower-case (Envoy sends them so), repeated lines joined with ","
    as Envoy joins them; ``header_lines`` holds the separate lines of the headers sent more
    than once (Envoy's RBAC header matcher tests each line on its own, so the engine does
    too); ``path`` has no query; ``source_ip`` is the connection's remote address (which the
    PROXY protocol overrides) and ``direct_source_ip`` the physical peer when Envoy reports
    it (Istio's ``source.ip``/``ipBlocks`` read the physical peer); ``source_principal`` is
    the mTLS peer identity as Envoy reports it (``spiffe://...``), used when no certificate
    is known; ``peer_uri_sans``/``peer_dns_sans``/``peer_subject`` come from the peer
    certificate, the names Envoy's RBAC ``authenticated`` matcher tries, in its order;
    ``context_extensions`` carries the workload identity (``namespace``, ``label.<name>``);
    ``metadata`` is Envoy's dynamic metadata by filter namespace, as sent (only the namespaces
    the ext_authz filter lists in ``metadata_context_namespaces``).

    A NamedTuple rather than a frozen dataclass: one is built per Check, and a tuple is built
    in one step where a frozen dataclass pays an ``object.__setattr__`` per field. It is just
    as immutable.
    """

    method: str = "GET"
    host: str = ""
    path: str = "/"
    query: str = ""
    headers: Mapping[str, str] = _EMPTY
    source_ip: str | None = None
    source_principal: str | None = None
    destination_ip: str | None = None
    destination_port: int | None = None
    sni: str | None = None
    context_extensions: Mapping[str, str] = _EMPTY
    request_id: str = ""
    header_lines: Mapping[str, tuple[str, ...]] = _NO_LINES
    direct_source_ip: str | None = None
    peer_uri_sans: tuple[str, ...] = ()
    peer_dns_sans: tuple[str, ...] = ()
    peer_subject: str | None = None
    metadata: Mapping[str, Mapping[str, object]] = MappingProxyType({})

    @classmethod
    def build(
        cls,
        *,
        method: str = "GET",
        host: str = "",
        path: str = "/",
        headers: Mapping[str, str | Sequence[str]] | None = None,
        source_ip: str | None = None,
        source_principal: str | None = None,
        destination_ip: str | None = None,
        destination_port: int | None = None,
        sni: str | None = None,
        context_extensions: Mapping[str, str] | None = None,
        request_id: str = "",
        direct_source_ip: str | None = None,
        peer_uri_sans: Sequence[str] = (),
        peer_dns_sans: Sequence[str] = (),
        peer_subject: str | None = None,
        metadata: Mapping[str, Mapping[str, object]] | None = None,
    ) -> AuthzRequest:
        """Build from raw parts: split the query off ``path``, lower-case header names.

        A header given as a list of values is a header sent on several lines.
        """
        raw_path, _, query = path.partition("?")
        raw_path, query = raw_path.partition("#")[0], query.partition("#")[0]
        joined, lines = merge_header_lines(
            (k, v) for k, values in (headers or {}).items()
            for v in ((values,) if isinstance(values, str) else values)
        )
        return cls(
            method=method,
            host=host,
            path=raw_path or "/",
            query=query,
            headers=MappingProxyType(joined),
            source_ip=source_ip or None,
            source_principal=source_principal or None,
            destination_ip=destination_ip or None,
            destination_port=destination_port,
            sni=sni or None,
            context_extensions=MappingProxyType(dict(context_extensions or {})),
            request_id=request_id,
            header_lines=MappingProxyType(lines),
            direct_source_ip=direct_source_ip or None,
            peer_uri_sans=tuple(peer_uri_sans),
            peer_dns_sans=tuple(peer_dns_sans),
            peer_subject=peer_subject or None,
            metadata=MappingProxyType(dict(metadata or {})),
        )

    def peer_names(self) -> tuple[str, ...]:
        """The peer names Envoy's RBAC ``authenticated`` matcher tries, in its order.

        Every URI SAN, then every DNS SAN, then the subject; without a certificate, the
        ``source_principal`` Envoy reported (or nothing: an unauthenticated peer).
        """
        if self.peer_uri_sans or self.peer_dns_sans or self.peer_subject:
            subject = (self.peer_subject,) if self.peer_subject else ()
            return self.peer_uri_sans + self.peer_dns_sans + subject
        return (self.source_principal,) if self.source_principal else ()


def merge_header_lines(
    pairs: Iterable[tuple[str, str]],
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Header lines -> (names lower-cased, repeated lines joined with ","; repeated lines).

    The joined map is what Envoy's ext_authz ``headers`` map holds; the second map keeps the
    lines of each repeated header apart (only those: most requests repeat none).
    """
    every: dict[str, list[str]] = {}
    for name, value in pairs:
        every.setdefault(name.lower(), []).append(value)
    joined = {k: ",".join(v) for k, v in every.items()}
    lines = {k: tuple(v) for k, v in every.items() if len(v) > 1}
    return joined, lines


@dataclass(frozen=True, slots=True)
class Workload:
    """The workload the calling Envoy protects: its namespace and labels."""

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_context(cls, extensions: Mapping[str, str], default_namespace: str) -> Workload:
        """Read ``namespace`` and ``label.<name>`` keys from ``context_extensions``."""
        labels = {
            k[len(_LABEL_PREFIX):]: v for k, v in extensions.items() if k.startswith(_LABEL_PREFIX)
        }
        return cls(namespace=extensions.get("namespace") or default_namespace, labels=labels)


def parse_ip(value: str | None) -> IPAddress | None:
    """An IP address, or None when absent or unparsable (an unparsable IP matches no block)."""
    if not value:
        return None
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def remote_ip(
    headers: Mapping[str, str], source_ip: str | None, trusted_proxies: int
) -> str | None:
    """The original client address (Istio's ``remote.ip``).

    The hop chain is ``X-Forwarded-For`` followed by the direct peer (unless Envoy already
    appended it). With N trusted proxies in front of Envoy, the client is the entry N places left
    of the peer; with 0 it is the peer itself, so a client cannot spoof it by sending a header.
    """
    chain = [p.strip() for p in headers.get("x-forwarded-for", "").split(",") if p.strip()]
    if source_ip and (not chain or chain[-1] != source_ip):
        chain.append(source_ip)
    if not chain:
        return None
    index = len(chain) - 1 - max(trusted_proxies, 0)
    chosen = chain[max(index, 0)]
    # Envoy ignores an X-Forwarded-For hop that is not an IP address and keeps the peer's
    # address as the remote address; Istio's remote.ip (RBAC remote_ip) follows it.
    return chosen if parse_ip(chosen) is not None else source_ip

