"""The mTLS peer certificate Envoy forwards, reduced to the names RBAC matches on.

With ``include_peer_certificate: true`` the CheckRequest carries the peer's certificate as
URL-encoded PEM (``attributes.source.certificate``). Envoy's RBAC ``authenticated`` matcher,
which Istio's principals, namespaces, service accounts and trust domains compile to, tries every
URI SAN, then every DNS SAN, then the subject; the CheckRequest's ``source.principal`` holds only
one of them. So the servicer parses the certificate (here) and hands the engine all of them.

The same certificate arrives on every request of a connection, so parses are cached by the
encoded PEM in a small LRU. An unparsable certificate yields no names (an unauthenticated
peer), never an error.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from cryptography import x509


@dataclass(frozen=True, slots=True)
class PeerNames:
    """A certificate's URI SANs, DNS SANs (in certificate order) and RFC 4514 subject."""

    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    subject: str | None = None


NO_NAMES = PeerNames()


def parse_certificate(encoded: str | bytes) -> PeerNames:
    """Names from a (URL-encoded) PEM certificate; ``NO_NAMES`` when it cannot be parsed."""
    raw = unquote_to_bytes(encoded)
    try:
        cert = x509.load_pem_x509_certificate(raw)
    except ValueError:
        return NO_NAMES
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        uris: list[str] = []
        dns: list[str] = []
    except ValueError:  # a malformed extension: treat as no SANs, keep the subject
        uris, dns = [], []
    else:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    try:
        subject: str | None = cert.subject.rfc4514_string() or None
    except ValueError:
        subject = None
    return PeerNames(uri_sans=tuple(uris), dns_sans=tuple(dns), subject=subject)


class CertificateCache:
    """Bounded LRU of parsed certificates, keyed by the encoded PEM as Envoy sends it."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[str, PeerNames] = OrderedDict()

    def names(self, encoded: str) -> PeerNames:
        """The names of ``encoded``, parsed once per distinct certificate."""
        entries = self._entries
        hit = entries.get(encoded)
        if hit is not None:
            entries.move_to_end(encoded)
            return hit
        names = parse_certificate(encoded)
        entries[encoded] = names
        if len(entries) > self.size:
            entries.popitem(last=False)
        return names

    def __len__(self) -> int:
        return len(self._entries)
