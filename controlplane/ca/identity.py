"""SPIFFE workload identities as Istio writes them: ``spiffe://<td>/ns/<ns>/sa/<sa>``.

The parts are validated with Kubernetes' naming rules (namespaces are DNS-1123 labels, service
accounts DNS-1123 subdomains) so an identity minted here is one Istio could have minted, and no
part can smuggle a ``/`` into the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.ca.errors import InvalidIdentity
from envoy_mixer.common.wire import DEFAULT_TRUST_DOMAIN, parse_spiffe, spiffe_uri

__all__ = ["DEFAULT_TRUST_DOMAIN", "SpiffeId", "validate_trust_domain"]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(rf"{_LABEL}\Z")
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*\Z")
# SPIFFE: a trust domain is lowercase letters, digits, '.', '-' and '_'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+\Z")


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if SPIFFE allows it, else raise InvalidIdentity."""
    if not _TRUST_DOMAIN.match(trust_domain) or len(trust_domain) > 255:
        raise InvalidIdentity(
            f"invalid trust domain '{trust_domain}': use lowercase letters, digits, '.', '-', '_'"
        )
    return trust_domain


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """One workload identity; construction validates every part."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if len(self.namespace) > 63 or not _DNS_LABEL.match(self.namespace):
            raise InvalidIdentity(
                f"invalid namespace '{self.namespace}': must be a DNS-1123 label "
                "(lowercase letters, digits and '-', at most 63 characters)"
            )
        if len(self.service_account) > 253 or not _DNS_SUBDOMAIN.match(self.service_account):
            raise InvalidIdentity(
                f"invalid service account '{self.service_account}': must be a DNS-1123 "
                "subdomain (lowercase letters, digits, '-' and '.')"
            )

    @property
    def uri(self) -> str:
        """The SPIFFE URI that goes into the certificate's only URI SAN."""
        return spiffe_uri(self.trust_domain, self.namespace, self.service_account)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse ``spiffe://td/ns/NS/sa/SA``; anything else raises InvalidIdentity."""
        parts = parse_spiffe(uri)
        if parts is None:
            raise InvalidIdentity(f"not an Istio SPIFFE id: '{uri}'")
        return cls(*parts)

    def __str__(self) -> str:
        return self.uri
