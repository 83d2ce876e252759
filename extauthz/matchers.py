"""Compiled matchers: the leaves of a policy, built once at load time.

A policy field such as ``paths: ["/api/*", "*.png", "/v1/{*}/items"]`` becomes one
``StringMatch`` holding an exact set, a prefix tuple, a suffix tuple and RE2 templates, so a
request costs one set lookup and two ``str.startswith``/``endswith`` calls. A ``FieldCheck``
binds a matcher to the request attribute it reads and to its polarity (``notX`` fields are the
negation of the OR of their values, as in Istio). ``Attributes`` is the per-request view every
matcher reads: the request with values derived once (lower-cased host, parsed IPs, SPIFFE
namespace, JWT identity).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from extauthz.request import AuthzRequest, IPAddress, parse_ip, remote_ip, spiffe_namespace

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TemplateError(ValueError):
    """A path template breaks Istio's rules for ``{*}`` and ``{**}``."""


@dataclass(frozen=True, slots=True)
class AuthIdentity:
    """The identity a valid JWT established (Istio's ``request.auth.*``)."""

    principal: str
    claims: Mapping[str, Any]
    audiences: tuple[str, ...] = ()
    presenter: str | None = None


class Attributes:
    """Everything matchers read from one request, derived once per Check."""

    __slots__ = (
        "auth", "auth_audiences", "auth_presenter", "auth_principal", "destination_ip",
        "destination_port", "headers", "host", "method", "path", "path_lower", "remote_ip",
        "request", "sni", "source_ip", "source_namespace", "source_principal",
    )

    def __init__(
        self, request: AuthzRequest, auth: AuthIdentity | None = None, trusted_proxies: int = 0
    ) -> None:
        self.request = request
        self.method = request.method
        self.host = request.host.lower()
        self.path = request.path
        self.path_lower = request.path.lower()
        self.headers = request.headers
        self.source_ip: IPAddress | None = parse_ip(request.source_ip)
        self.remote_ip: IPAddress | None = parse_ip(
            remote_ip(request.headers, request.source_ip, trusted_proxies)
        )
        self.destination_ip: IPAddress | None = parse_ip(request.destination_ip)
        self.destination_port = request.destination_port
        principal = request.source_principal
        # Istio writes principals without the scheme and matches them as spiffe://<value>.
        self.source_principal = principal.removeprefix("spiffe://") if principal else None
        self.source_namespace = spiffe_namespace(principal)
        self.sni = request.sni
        self.auth = auth
        self.auth_principal = auth.principal if auth else None
        self.auth_audiences: tuple[str, ...] = auth.audiences if auth else ()
        self.auth_presenter = auth.presenter if auth else None


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio string matching over a list of values: exact, ``prefix*``, ``*suffix``, ``*``.

    ``templates`` are compiled ``{*}``/``{**}`` path templates; ``ignore_case`` lower-cases
    both sides (hosts always; paths when a policy opts in).
    """

    values: tuple[str, ...]
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    presence: bool
    templates: tuple[Any, ...] = ()
    ignore_case: bool = False

    @classmethod
    def compile(
        cls, values: Sequence[str], *, ignore_case: bool = False, templates: bool = False
    ) -> StringMatch:
        """Compile values; with ``templates`` a value containing ``{`` or ``}`` is a template."""
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        compiled: list[Any] = []
        presence = False
        for raw in values:
            v = raw.lower() if ignore_case else raw
            if templates and ("{" in v or "}" in v):
                compiled.append(re2.compile(template_regex(v)))
            elif v == "*":
                presence = True
            elif v.startswith("*"):
                suffixes.append(v[1:])
            elif v.endswith("*"):
                prefixes.append(v[:-1])
            else:
                exact.add(v)
        return cls(
            values=tuple(values), exact=frozenset(exact), prefixes=tuple(prefixes),
            suffixes=tuple(suffixes), presence=presence, templates=tuple(compiled),
            ignore_case=ignore_case,
        )

    def __call__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if self.ignore_case:
            value = value.lower()
        if value in self.exact:
            return True
        if self.presence and value:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        return any(t.fullmatch(value) is not None for t in self.templates)

    @property
    def indexable(self) -> bool:
        """True when only exact and prefix values are present (usable as an index key)."""
        return not (self.presence or self.suffixes or self.templates)


def template_regex(template: str) -> str:
    """RE2 source for an Istio path template (``{*}`` one segment, ``{**}`` the rest).

    Rules (Istio >= 1.22): an operator fills its whole segment; ``{**}`` is the last operator;
    no bare ``*``, ``{`` or ``}`` elsewhere.
    """
    if not template.startswith("/"):
        raise TemplateError(f"path template '{template}' must start with '/'")
    out: list[str] = []
    seen_double = False
    for segment in template.split("/"):
        if segment in ("{*}", "{**}"):
            if seen_double:
                raise TemplateError(
                    f"path template '{template}': '{{**}}' must be the last operator"
                )
            seen_double = segment == "{**}"
            out.append("[^/]+" if segment == "{*}" else ".*")
        elif any(c in segment for c in "{}*"):
            raise TemplateError(
                f"path template '{template}': segment '{segment}' must be exactly '{{*}}' or "
                "'{**}' (no other characters, no bare '*', '{' or '}')"
            )
        else:
            out.append(re.escape(segment))
    return "/".join(out)


@dataclass(frozen=True, slots=True)
class IpMatch:
    """IP addresses and CIDR blocks (``ipBlocks``, ``source.ip`` ...)."""

    values: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def compile(cls, values: Sequence[str]) -> IpMatch:
        """Parse each value as an address or CIDR; raises ValueError naming the bad one."""
        nets: list[IPNetwork] = []
        for v in values:
            try:
                nets.append(ipaddress.ip_network(v.strip(), strict=False))
            except ValueError:
                raise ValueError(f"invalid IP address or CIDR block '{v}'") from None
        return cls(values=tuple(values), networks=tuple(nets))

    def __call__(self, value: object) -> bool:
        if not isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return any(value in net for net in self.networks)


@dataclass(frozen=True, slots=True)
class PortMatch:
    """Destination ports (``ports``, ``destination.port``)."""

    values: tuple[str, ...]
    ports: frozenset[int]

    @classmethod
    def compile(cls, values: Sequence[str | int]) -> PortMatch:
        """Parse ports 0..65535; raises ValueError naming the bad one."""
        ports: set[int] = set()
        for v in values:
            text = str(v).strip()
            if not text.isdigit() or not 0 <= int(text) <= 65535:
                raise ValueError(f"invalid port '{v}' (expected 0..65535)")
            ports.add(int(text))
        return cls(values=tuple(str(v) for v in values), ports=frozenset(ports))

    def __call__(self, value: object) -> bool:
        return value in self.ports


Matcher = StringMatch | IpMatch | PortMatch


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """One policy field bound to the attribute it reads.

    ``negate`` implements ``notX``/``notValues`` (true when NO value matches, including when the
    attribute is absent). ``many`` marks list attributes (audiences, list claims): any element
    matching counts as a match.
    """

    field: str
    attribute: str
    getter: Callable[[Attributes], Any]
    matcher: Matcher
    negate: bool = False
    many: bool = False

    def matches(self, attrs: Attributes) -> bool:
        """True if this field accepts the request."""
        value = self.getter(attrs)
        if self.many:
            hit = any(self.matcher(v) for v in value) if value else False
        else:
            hit = self.matcher(value)
        return hit is not self.negate

    def explain(self, attrs: Attributes) -> str:
        """Why this field rejects the request (call only when ``matches`` is False)."""
        value = self.getter(attrs)
        shown = "<absent>" if value is None or value == () else repr(_plain(value))
        which = "one" if self.negate else "none"
        values = list(self.matcher.values)
        return f"{self.field}: {self.attribute} {shown} matches {which} of {values}"

    def describe(self) -> dict[str, Any]:
        """JSON-able form for ``/config`` and ``explain``."""
        return {"field": self.field, "attribute": self.attribute,
                "values": list(self.matcher.values), "negate": self.negate}


def _plain(value: Any) -> Any:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Clause:
    """AND of field checks: one ``source``, one ``operation``, or a rule's ``when`` list."""

    checks: tuple[FieldCheck, ...]

    def matches(self, attrs: Attributes) -> bool:
        """True if every check accepts the request."""
        for check in self.checks:  # noqa: SIM110 - a plain loop beats all(genexpr) here
            if not check.matches(attrs):
                return False
        return True

    def first_failure(self, attrs: Attributes) -> FieldCheck | None:
        """The first check that rejects the request, if any."""
        for check in self.checks:
            if not check.matches(attrs):
                return check
        return None
