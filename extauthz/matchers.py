"""Compiled matchers: the leaves of a policy, built once at load time.

A policy field such as ``paths: ["/api/*", "*.png", "/v1/{*}/items"]`` becomes one
``StringMatch`` holding an exact set, a prefix tuple, a suffix tuple and compiled templates, so a
request costs one set lookup and two ``str.startswith``/``endswith`` calls. A ``FieldCheck``
binds a matcher to the request attribute it reads and to its polarity (``notX`` fields are the
negation of the OR of their values, as in Istio). ``Attributes`` is the per-request view every
matcher reads: the request with values derived once (lower-cased host and SNI, parsed IPs, the
peer certificate's names, JWT identity).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from extauthz.request import AuthzRequest, IPAddress, parse_ip, remote_ip

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
    #: Every string ``azp`` value (a list ``azp`` is matched element-wise, as Istio does).
    presenters: tuple[str, ...] = ()


_UNSET: Any = object()


class Attributes:
    """Everything matchers read from one request, derived once per Check.

    Cheap fields are set eagerly; parsed IPs, the remote address, the peer's names and the
    lower-cased path are computed on first use only, so a policy set that never looks at IPs
    never pays for parsing them.
    """

    __slots__ = (
        "_destination_ip", "_path_lower", "_peer_names", "_remote_ip", "_source_ip", "auth",
        "auth_audiences", "auth_presenter", "auth_presenters", "auth_principal",
        "destination_port", "header_lines", "headers", "host", "method", "path", "request",
        "sni", "trusted_proxies",
    )

    def __init__(
        self, request: AuthzRequest, auth: AuthIdentity | None = None, trusted_proxies: int = 0
    ) -> None:
        self.request = request
        self.trusted_proxies = trusted_proxies
        self.method = request.method
        self.host = request.host.lower()
        self.path = request.path
        self.headers = request.headers
        self.header_lines = request.header_lines
        self.destination_port = request.destination_port
        # Envoy lower-cases the SNI it hands RBAC's requested_server_name; the CheckRequest
        # keeps the client's case, so fold it here or "API.EXAMPLE.COM" slips past a DENY.
        self.sni = request.sni.lower() if request.sni else None
        self.auth = auth
        self.auth_principal = auth.principal if auth else None
        self.auth_audiences: tuple[str, ...] = auth.audiences if auth else ()
        self.auth_presenter = auth.presenter if auth else None
        self.auth_presenters: tuple[str, ...] = auth.presenters if auth else ()
        self._peer_names: Any = _UNSET
        self._source_ip: Any = _UNSET
        self._remote_ip: Any = _UNSET
        self._destination_ip: Any = _UNSET
        self._path_lower: Any = _UNSET

    @property
    def source_ip(self) -> IPAddress | None:
        """The physical peer's address (``source.ip``, Istio's ``direct_remote_ip``).

        Envoy reports it apart from the connection's remote address only when the PROXY
        protocol (or an original-source filter) replaced the latter; otherwise they agree.
        """
        if self._source_ip is _UNSET:
            req = self.request
            self._source_ip = parse_ip(req.direct_source_ip or req.source_ip)
        value: IPAddress | None = self._source_ip
        return value

    @property
    def peer_names(self) -> tuple[str, ...]:
        """What RBAC's ``authenticated`` matcher tries: URI SANs, DNS SANs, the subject."""
        if self._peer_names is _UNSET:
            self._peer_names = self.request.peer_names()
        value: tuple[str, ...] = self._peer_names
        return value

    @property
    def auth_iss_sub(self) -> tuple[str, str] | None:
        """The token's ``(iss, sub)`` when both are strings (what Istio's JWT matchers read)."""
        auth = self.auth
        if auth is None:
            return None
        iss, sub = auth.claims.get("iss"), auth.claims.get("sub")
        if isinstance(iss, str) and isinstance(sub, str):
            return iss, sub
        return None

    @property
    def remote_ip(self) -> IPAddress | None:
        """The original client (``remote.ip``), from X-Forwarded-For and trusted proxies."""
        if self._remote_ip is _UNSET:
            req = self.request
            self._remote_ip = parse_ip(remote_ip(req.headers, req.source_ip, self.trusted_proxies))
        value: IPAddress | None = self._remote_ip
        return value

    @property
    def destination_ip(self) -> IPAddress | None:
        """The workload's address (``destination.ip``)."""
        if self._destination_ip is _UNSET:
            self._destination_ip = parse_ip(self.request.destination_ip)
        value: IPAddress | None = self._destination_ip
        return value

    @property
    def path_lower(self) -> str:
        """The path lower-cased (policies opting into case-insensitive paths)."""
        if self._path_lower is _UNSET:
            self._path_lower = self.path.lower()
        value: str = self._path_lower
        return value


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled path template and its literal head (the text before the first operator).

    Matched segment by segment, which is exactly the template's regex (``template_regex``):
    ``head`` holds the segments before ``{**}`` (a literal, or None for ``{*}``: one non-empty
    segment); with ``{**}``, ``tail`` is the literal text after it (``.*`` then that text,
    e.g. ``"/cart"``), else None. No regex object per template: this is both faster and much
    smaller, which matters when thousands of rules carry one.
    """

    pattern_head: str
    head: tuple[str | None, ...]
    tail: str | None

    @classmethod
    def compile(cls, template: str) -> Template:
        """Compile a template; raises TemplateError when it breaks Istio's rules."""
        template_regex(template)  # validates
        segments = template.split("/")
        if "{**}" in segments:
            at = segments.index("{**}")
            head, tail = segments[:at], "".join("/" + s for s in segments[at + 1:])
        else:
            head, tail = segments, None
        # Segments are interned: thousands of templates share "api", "v1", "items" ...
        return cls(
            pattern_head=template[: template.index("{")] if "{" in template else template,
            head=tuple(None if s == "{*}" else sys.intern(s) for s in head), tail=tail,
        )

    def matches(self, path: str) -> bool:
        """True if ``path`` matches the whole template."""
        head = self.head
        if self.tail is None:
            parts = path.split("/")
            if len(parts) != len(head):
                return False
        else:
            # The head's segments, then everything after their "/" for {**} and the tail.
            parts = path.split("/", len(head))
            if len(parts) != len(head) + 1 or not parts[-1].endswith(self.tail):
                return False
        for want, got in zip(head, parts, strict=False):
            if want is None:
                if not got:
                    return False
            elif want != got:
                return False
        return True


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
    templates: tuple[Template, ...] = ()
    ignore_case: bool = False
    #: Further alternatives as one full-match regex (Istio's regex matchers, e.g. principals'
    #: ``spiffe://.*<suffix>`` or namespaces' ``.*/ns/<ns>/.*``).
    regex: re.Pattern[str] | None = None
    #: ``*`` also accepts an empty value: a header's ``*`` is Envoy's ``present_match``,
    #: where other fields' ``*`` is the regex ``.+``.
    empty_ok: bool = False

    @classmethod
    def compile(
        cls, values: Sequence[str], *, ignore_case: bool = False, templates: bool = False
    ) -> StringMatch:
        """Compile values; with ``templates`` a value containing ``{`` or ``}`` is a template."""
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        compiled: list[Template] = []
        presence = False
        for raw in values:
            v = raw.lower() if ignore_case else raw
            if templates and ("{" in v or "}" in v):
                compiled.append(Template.compile(v))
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
        if self.presence and (value or self.empty_ok):
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        for template in self.templates:
            if template.matches(value):
                return True
        return self.regex is not None and self.regex.fullmatch(value) is not None

    @classmethod
    def header(cls, values: Sequence[str]) -> StringMatch:
        """Istio's header values: exact, prefix, suffix; ``*`` is presence (empty counts)."""
        compiled = cls.compile(values)
        return cls(values=compiled.values, exact=compiled.exact, prefixes=compiled.prefixes,
                   suffixes=compiled.suffixes, presence=compiled.presence, empty_ok=True)

    @classmethod
    def spiffe(cls, values: Sequence[str], alternatives: Sequence[str] = ()) -> StringMatch:
        """Istio's principals: each value matched as ``spiffe://<value>``.

        Exact and ``prefix*`` get the scheme prepended; ``*`` is any non-empty name (regex
        ``.+``, the scheme is not required); ``*suffix`` is the regex ``spiffe://.*<suffix>``.
        ``alternatives`` are further regexes (full match) OR-ed in.
        """
        exact: set[str] = set()
        prefixes: list[str] = []
        regexes = list(alternatives)
        presence = False
        for v in values:
            if v == "*":
                presence = True
            elif v.startswith("*"):
                regexes.append(SPIFFE + ".*" + re.escape(v[1:]))
            elif v.endswith("*"):
                prefixes.append(SPIFFE + v[:-1])
            else:
                exact.add(SPIFFE + v)
        return cls(values=tuple(values), exact=frozenset(exact), prefixes=tuple(prefixes),
                   suffixes=(), presence=presence, regex=_alternation(regexes))

    @classmethod
    def regexes(cls, values: Sequence[str], patterns: Sequence[str],
                prefixes: Sequence[str] = ()) -> StringMatch:
        """Values (for display) matched by full-match ``patterns`` or plain ``prefixes``."""
        return cls(values=tuple(values), exact=frozenset(), prefixes=tuple(prefixes),
                   suffixes=(), presence=False, regex=_alternation(patterns))

    @property
    def index_prefixes(self) -> tuple[str, ...]:
        """Prefixes for indexing: the ``prefix*`` values plus each template's literal head."""
        heads = tuple(t.pattern_head for t in self.templates)
        return self.prefixes + heads


SPIFFE = "spiffe://"


def _alternation(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def namespace_regex(namespace: str) -> str:
    """Istio's ``source.namespace`` regex: ``.*/ns/<ns>/.*`` (``*`` in the value is ``.*``)."""
    return ".*/ns/" + ".*".join(re.escape(part) for part in namespace.split("*")) + "/.*"


def service_account_regex(default_namespace: str, value: str) -> str:
    """Istio's ``serviceAccounts`` regex for ``sa`` or ``ns/sa``.

    ``spiffe://`` and a non-empty trust domain, ``/ns/<ns>/``, optional further segments,
    ``sa/<sa>``, then the end or ``/`` and more (so ``sa/a`` never matches ``sa/a-b``).
    """
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = default_namespace, value
    return f"spiffe://.+/ns/{re.escape(ns)}/(.+/|)sa/{re.escape(sa)}(/.+)?"


def trust_domain_pattern(value: str) -> tuple[str | None, str | None]:
    """Istio's ``trustDomains`` matcher for one value: ``(prefix, None)`` or ``(None, regex)``.

    ``*`` is any SPIFFE name; a plain domain is the prefix ``spiffe://<td>/``; a domain with
    one ``*`` is ``spiffe://<head>[^/]*<tail>/.*``.
    """
    if value == "*":
        return SPIFFE, None
    if "*" not in value:
        return f"{SPIFFE}{value}/", None
    head, _, tail = value.partition("*")
    return None, f"spiffe://{re.escape(head)}[^/]*{re.escape(tail)}/.*"


def template_regex(template: str) -> str:
    """Regex source for an Istio path template (``{*}`` one segment, ``{**}`` the rest).

    The reference semantics (``Template.matches`` implements them without a regex), and the
    validation of a template.

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


_Part = tuple[str, str]  # ("any" | "exact" | "prefix" | "suffix", text)


def _part_matches(part: _Part, value: str) -> bool:
    kind, text = part
    if kind == "any":
        return bool(value)
    if kind == "exact":
        return value == text
    if kind == "prefix":
        return value.startswith(text)
    return value.endswith(text)


@dataclass(frozen=True, slots=True)
class RequestPrincipalMatch:
    """Istio's ``requestPrincipals``: each value is an issuer matcher AND a subject matcher.

    The value splits at its LAST ``/`` (issuers are often URLs) and each side is matched on
    its own claim, exactly as Istio's generated JWT metadata matchers: ``iss/sub`` exact both;
    ``iss/*`` the exact issuer and any non-empty subject; ``iss/pre*`` a subject prefix;
    ``*/sub`` any non-empty issuer; ``*suf/sub`` an issuer suffix; ``*`` both non-empty; with no
    ``/``, ``pre*`` is an issuer prefix with any non-empty subject and ``*suf`` any non-empty
    issuer with a subject suffix. So ``https://a.com/*`` never admits issuer
    ``https://a.com/tenant``. Reads ``(iss, sub)``.
    """

    values: tuple[str, ...]
    pairs: tuple[tuple[_Part, _Part], ...]

    @classmethod
    def compile(cls, values: Sequence[str]) -> RequestPrincipalMatch:
        """Split each value into its issuer and subject matchers."""
        return cls(values=tuple(values), pairs=tuple(_principal_pair(v) for v in values))

    def __call__(self, value: object) -> bool:
        if not isinstance(value, tuple):
            return False
        iss, sub = value
        return any(_part_matches(i, iss) and _part_matches(s, sub) for i, s in self.pairs)


def _principal_pair(value: str) -> tuple[_Part, _Part]:
    any_: _Part = ("any", "")
    iss, found, sub = value.rpartition("/")
    if not found:  # no "/": all of it is the issuer, and the subject is exactly ""
        iss, sub = value, ""
    if value == "*":
        return any_, any_
    if value.startswith("*"):
        if not found:
            return any_, ("suffix", value[1:])
        return (any_ if iss == "*" else ("suffix", iss[1:])), ("exact", sub)
    if value.endswith("*"):
        if not found:
            return ("prefix", value[:-1]), any_
        return ("exact", iss), (any_ if sub == "*" else ("prefix", sub[:-1]))
    return ("exact", iss), ("exact", sub)


@dataclass(frozen=True, slots=True)
class MetadataMatch:
    """Istio's ``experimental.envoy.filters.<filter>[<key>]`` values over dynamic metadata.

    A value ``v`` is a string matcher on a string metadata value; ``[v]`` matches a list value
    when any string element matches ``v``. A missing value, or one of another type, matches
    neither (Envoy's metadata matcher).
    """

    values: tuple[str, ...]
    scalar: StringMatch | None
    listed: StringMatch | None

    @classmethod
    def compile(cls, values: Sequence[str]) -> MetadataMatch:
        """Split the values into string and ``[list]`` matchers."""
        scalar = [v for v in values if not (v.startswith("[") and v.endswith("]"))]
        listed = [v[1:-1] for v in values if v.startswith("[") and v.endswith("]")]
        return cls(values=tuple(values),
                   scalar=StringMatch.compile(scalar) if scalar else None,
                   listed=StringMatch.compile(listed) if listed else None)

    def __call__(self, value: object) -> bool:
        if isinstance(value, str):
            return self.scalar is not None and self.scalar(value)
        if isinstance(value, list) and self.listed is not None:
            return any(self.listed(v) for v in value)
        return False


Matcher = StringMatch | IpMatch | PortMatch | RequestPrincipalMatch | MetadataMatch


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
    #: The model attribute the check comes from (Istio's name, e.g. ``path-matcher``,
    #: ``request.headers[x-role]``): what indexing decisions read.
    key: str = ""
    #: ``matches`` specialized once at load (what Clause and CompiledRule call per request).
    #: The compiler passes a test shared by every equal check (same attribute, matcher and
    #: polarity) of the policy set, so thousands of rules reuse a handful of test objects.
    test: Callable[[Attributes], bool] = dataclass_field(default=None, repr=False,  # type: ignore[assignment]
                                                         compare=False)

    def __post_init__(self) -> None:
        if self.test is None:
            object.__setattr__(self, "test", self._specialize())

    def _specialize(self) -> Callable[[Attributes], bool]:
        # Most fields are exact strings, string prefixes or ports: a set membership test and a
        # startswith, no matcher call. Anything else goes through the matcher (same result).
        # Captured values are default arguments rather than closure cells: fewer objects per
        # test (no cells) and faster local reads.
        getter, matcher, negate = self.getter, self.matcher, self.negate
        if self.many:
            return _many_test(getter, matcher, negate)
        if isinstance(matcher, PortMatch):
            ports = matcher.ports
            if negate:
                def not_port(attrs: Attributes, getter: Any = getter, ports: Any = ports) -> bool:
                    return getter(attrs) not in ports
                return not_port

            def port(attrs: Attributes, getter: Any = getter, ports: Any = ports) -> bool:
                return getter(attrs) in ports
            return port
        if not isinstance(matcher, StringMatch) or matcher.suffixes or matcher.presence \
                or matcher.ignore_case or matcher.regex is not None:
            return self.matches
        exact, prefixes, templates = matcher.exact, matcher.prefixes, matcher.templates
        if templates:
            if prefixes or negate:
                return self.matches

            def exact_or_template(attrs: Attributes, getter: Any = getter, exact: Any = exact,
                                  templates: Any = templates) -> bool:
                value = getter(attrs)
                if not isinstance(value, str):
                    return False
                if value in exact:
                    return True
                for template in templates:  # noqa: SIM110 - a plain loop beats any(genexpr)
                    if template.matches(value):
                        return True
                return False
            return exact_or_template
        if not prefixes:
            # None (absent) is in no set of strings, exactly like the matcher's answer.
            if negate:
                def not_in(attrs: Attributes, getter: Any = getter, exact: Any = exact) -> bool:
                    return getter(attrs) not in exact
                return not_in

            def is_in(attrs: Attributes, getter: Any = getter, exact: Any = exact) -> bool:
                return getter(attrs) in exact
            return is_in

        def test(attrs: Attributes, getter: Any = getter, exact: Any = exact,
                 prefixes: Any = prefixes, negate: bool = negate) -> bool:
            value = getter(attrs)
            hit = isinstance(value, str) and (value in exact or value.startswith(prefixes))
            return hit is not negate
        return test

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


def _many_test(getter: Callable[[Attributes], Any], matcher: Matcher,
               negate: bool) -> Callable[[Attributes], bool]:
    # List attributes (peer names, header lines, audiences): usually one or two elements, so a
    # plain loop with the exact set read directly beats any() over a generator.
    if isinstance(matcher, StringMatch) and not (
            matcher.prefixes or matcher.suffixes or matcher.presence or matcher.templates
            or matcher.ignore_case or matcher.regex is not None):
        exact = matcher.exact

        def any_exact(attrs: Attributes, getter: Any = getter, exact: Any = exact,
                      negate: bool = negate) -> bool:
            for value in getter(attrs):
                if value in exact:
                    return not negate
            return negate
        return any_exact

    def any_match(attrs: Attributes, getter: Any = getter, matcher: Any = matcher,
                  negate: bool = negate) -> bool:
        for value in getter(attrs):
            if matcher(value):
                return not negate
        return negate
    return any_match


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
    #: The checks' specialized tests, in order.
    tests: tuple[Callable[[Attributes], bool], ...] = dataclass_field(init=False, repr=False,
                                                             compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tests", tuple(c.test for c in self.checks))

    def matches(self, attrs: Attributes) -> bool:
        """True if every check accepts the request."""
        for test in self.tests:  # noqa: SIM110 - a plain loop beats all(genexpr) here
            if not test(attrs):
                return False
        return True

    def first_failure(self, attrs: Attributes) -> FieldCheck | None:
        """The first check that rejects the request, if any."""
        for check in self.checks:
            if not check.matches(attrs):
                return check
        return None
