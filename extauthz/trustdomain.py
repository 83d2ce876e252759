"""The mesh's trust domain and its aliases, applied to policies as Istio applies them.

Istio's mesh config names a trust domain (``cluster.local`` by default) and aliases for it; a
policy naming one of them matches identities of all of them. Istio rewrites the policy values
before generating RBAC (pilot's ``trustdomain.Bundle``), and so do we, at load time:

- ``principals`` / ``source.principal``: a value ``<td>/ns/<ns>/sa/<sa>`` whose trust domain is
  in the bundle (or is ``cluster.local``, which always means "the local trust domain") becomes
  one value per trust domain of the bundle; other values stay as written;
- ``trustDomains`` / ``source.trustDomain``: a value equal to a trust domain of the bundle
  expands to the whole bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class TrustDomains:
    """The local trust domain first, then its aliases."""

    domain: str = DEFAULT_TRUST_DOMAIN
    aliases: tuple[str, ...] = ()

    @classmethod
    def parse(cls, domain: str | None, aliases: str | Sequence[str] | None) -> TrustDomains:
        """From flag values: ``aliases`` may be a comma-separated string."""
        if isinstance(aliases, str):
            aliases = aliases.split(",")
        names = tuple(a.strip() for a in aliases or () if a.strip())
        return cls(domain=(domain or "").strip() or DEFAULT_TRUST_DOMAIN, aliases=names)

    @property
    def bundle(self) -> tuple[str, ...]:
        """The trust domain followed by its aliases."""
        return (self.domain, *self.aliases)

    def replace_aliases(self, principals: Sequence[str]) -> list[str]:
        """Principals rewritten for every trust domain of the bundle (Istio's rule)."""
        out: list[str] = []
        for principal in principals:
            parts = principal.split("/")
            # Not a <td>/ns/<ns>/sa/<sa> identity, or "*" as trust domain: nothing to rewrite.
            if len(parts) != 5 or parts[0] == "*":
                out.append(principal)
                continue
            td = parts[0]
            if not (_pattern_match(td, self.bundle) or td == DEFAULT_TRUST_DOMAIN):
                out.append(principal)
                continue
            rest = "/".join(parts[1:])
            for candidate in self.bundle:
                # A "*suffix" trust domain in the policy that covers this one stays as is.
                new = principal if _suffix_match(candidate, td) else f"{candidate}/{rest}"
                if new not in out:
                    out.append(new)
        return out

    def expand_aliases(self, values: Sequence[str]) -> list[str]:
        """Trust-domain values, each member of the bundle expanded to the whole bundle."""
        out: list[str] = []
        for value in values:
            for v in self.bundle if value in self.bundle else (value,):
                if v not in out:
                    out.append(v)
        return out


def _prefix_match(text: str, pattern: str) -> bool:
    return pattern.endswith("*") and text.startswith(pattern[:-1])


def _suffix_match(text: str, pattern: str) -> bool:
    return pattern.startswith("*") and text.endswith(pattern[1:])


def _pattern_match(text: str, candidates: Sequence[str]) -> bool:
    # Istio's trustdomain.stringMatch: the pattern may be on either side.
    return any(
        text == c or c == "*" or _prefix_match(text, c) or _prefix_match(c, text)
        or _suffix_match(text, c) or _suffix_match(c, text)
        for c in candidates
    )
