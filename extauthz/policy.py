"""Istio ``AuthorizationPolicy`` / ``RequestAuthentication`` YAML -> compiled, indexed policy set.

Three stages, each with errors that name file, line and field:

1. YAML documents (``envoy_mixer.common.yamlsrc``) -> pydantic models mirroring Istio's CRDs
   (``security.istio.io/v1`` and ``v1beta1``; unknown keys rejected, Kubernetes metadata noise
   such as ``uid`` or ``managedFields`` tolerated, ``kind: List`` unwrapped).
2. Models -> ``Policy`` / ``CompiledRule`` trees of precompiled matchers (sets, prefix/suffix
   tuples, CIDR networks, compiled path templates).
3. Policies -> ``PolicySet``, which hands out a ``WorkloadView`` per workload identity (memoized):
   only the policies whose namespace/selector apply, with their rules indexed by exact path,
   path prefix, host or method so the per-request cost does not grow with the rule count.

Extensions beyond Istio are opt-in per policy through annotations (Istio ignores unknown
annotations, so the files stay valid Istio):

- ``authz.envoy-mixer.io/deny-status`` / ``deny-body`` / ``deny-headers``: custom deny response
  of a DENY policy;
- ``authz.envoy-mixer.io/case-insensitive-paths: "true"``: match this policy's paths ignoring
  case (e.g. a DENY on ``/admin`` that must also catch ``/ADMIN``).
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.logs import log_event
from envoy_mixer.common.yamlsrc import SourceDoc, config_files, load_file, pydantic_errors
from extauthz.errors import JwksError
from extauthz.jwt import DEFAULT_SPACE_DELIMITED, JwtRule, TokenLocation, parse_jwks
from extauthz.matchers import (
    Attributes,
    Clause,
    FieldCheck,
    IpMatch,
    Matcher,
    MetadataMatch,
    PortMatch,
    RequestPrincipalMatch,
    StringMatch,
    TemplateError,
    namespace_regex,
    service_account_regex,
    trust_domain_pattern,
)
from extauthz.request import Workload
from extauthz.trustdomain import TrustDomains

_log = logging.getLogger("extauthz.policy")

API_GROUP = "security.istio.io"
API_VERSIONS = (f"{API_GROUP}/v1", f"{API_GROUP}/v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
EXT = "authz.envoy-mixer.io/"
DENY_STATUS_ANNOTATION = EXT + "deny-status"
DENY_BODY_ANNOTATION = EXT + "deny-body"
DENY_HEADERS_ANNOTATION = EXT + "deny-headers"
CASE_INSENSITIVE_PATHS_ANNOTATION = EXT + "case-insensitive-paths"

Action = Literal["ALLOW", "DENY", "AUDIT"]

# --------------------------------------------------------------------------------------------
# 1. Models (Istio's field names, camelCase, strict)
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


StrList = list[str]


class SourceModel(_Strict):
    """``rules[].from[].source``."""

    principals: StrList = []
    not_principals: StrList = Field([], alias="notPrincipals")
    request_principals: StrList = Field([], alias="requestPrincipals")
    not_request_principals: StrList = Field([], alias="notRequestPrincipals")
    namespaces: StrList = []
    not_namespaces: StrList = Field([], alias="notNamespaces")
    service_accounts: StrList = Field([], alias="serviceAccounts")
    not_service_accounts: StrList = Field([], alias="notServiceAccounts")
    ip_blocks: StrList = Field([], alias="ipBlocks")
    not_ip_blocks: StrList = Field([], alias="notIpBlocks")
    remote_ip_blocks: StrList = Field([], alias="remoteIpBlocks")
    not_remote_ip_blocks: StrList = Field([], alias="notRemoteIpBlocks")
    trust_domains: StrList = Field([], alias="trustDomains")
    not_trust_domains: StrList = Field([], alias="notTrustDomains")


class OperationModel(_Strict):
    """``rules[].to[].operation``."""

    hosts: StrList = []
    not_hosts: StrList = Field([], alias="notHosts")
    ports: list[str | int] = []
    not_ports: list[str | int] = Field([], alias="notPorts")
    methods: StrList = []
    not_methods: StrList = Field([], alias="notMethods")
    paths: StrList = []
    not_paths: StrList = Field([], alias="notPaths")


class FromModel(_Strict):
    """One ``from`` entry."""

    source: SourceModel = SourceModel()


class ToModel(_Strict):
    """One ``to`` entry."""

    operation: OperationModel = OperationModel()


class ConditionModel(_Strict):
    """One ``when`` condition."""

    key: str
    values: list[str | int] = []
    not_values: list[str | int] = Field([], alias="notValues")


class RuleModel(_Strict):
    """One rule: from AND to AND when."""

    from_: list[FromModel] = Field([], alias="from")
    to: list[ToModel] = []
    when: list[ConditionModel] = []


class SelectorModel(_Strict):
    """``spec.selector``."""

    match_labels: dict[str, str] = Field({}, alias="matchLabels")


class ProviderModel(_Strict):
    """``spec.provider`` (CUSTOM only)."""

    name: str = ""


class AuthorizationPolicySpec(_Strict):
    """``AuthorizationPolicy.spec``."""

    selector: SelectorModel | None = None
    target_ref: dict[str, Any] | None = Field(None, alias="targetRef")
    target_refs: list[dict[str, Any]] | None = Field(None, alias="targetRefs")
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ProviderModel | None = None
    rules: list[RuleModel] | None = None


class HeaderLocationModel(_Strict):
    """``jwtRules[].fromHeaders[]``."""

    name: str
    prefix: str = ""


class ClaimToHeaderModel(_Strict):
    """``jwtRules[].outputClaimToHeaders[]``."""

    header: str
    claim: str


class JwtRuleModel(_Strict):
    """``RequestAuthentication.spec.jwtRules[]``."""

    issuer: str
    audiences: StrList = []
    jwks_uri: str | None = Field(None, alias="jwksUri")
    jwks: str | None = None
    from_headers: list[HeaderLocationModel] = Field([], alias="fromHeaders")
    from_params: StrList = Field([], alias="fromParams")
    from_cookies: StrList = Field([], alias="fromCookies")
    output_payload_to_header: str | None = Field(None, alias="outputPayloadToHeader")
    forward_original_token: bool = Field(False, alias="forwardOriginalToken")
    output_claim_to_headers: list[ClaimToHeaderModel] = Field([], alias="outputClaimToHeaders")
    timeout: str | None = None
    space_delimited_claims: StrList = Field([], alias="spaceDelimitedClaims")


class RequestAuthenticationSpec(_Strict):
    """``RequestAuthentication.spec``."""

    selector: SelectorModel | None = None
    target_ref: dict[str, Any] | None = Field(None, alias="targetRef")
    target_refs: list[dict[str, Any]] | None = Field(None, alias="targetRefs")
    jwt_rules: list[JwtRuleModel] = Field([], alias="jwtRules")


class MetadataModel(BaseModel):
    """Kubernetes metadata: only name, namespace and annotations matter; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str | None = None
    annotations: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class ResourceModel(BaseModel):
    """A whole resource; ``status`` and other server-side fields are tolerated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: MetadataModel
    spec: dict[str, Any] = {}
    status: Any = None


# --------------------------------------------------------------------------------------------
# 2. Compiled structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DenyResponse:
    """The opt-in custom deny response of a DENY policy."""

    status: int = 403
    body: str = "RBAC: access denied"
    headers: tuple[tuple[str, str], ...] = ()


DEFAULT_DENY = DenyResponse()


@dataclass(frozen=True, slots=True)
class IndexKey:
    """How a rule is indexed: a value it requires of one request attribute.

    ``path``/``path_ci``: exact paths, prefixes and suffixes (one of which the path must hit);
    ``host``/``method``: exact values; ``header``: the names in ``exact`` of headers the rule
    requires to be present (a positive ``request.headers[...]`` condition fails without one).
    """

    dimension: Literal["path", "path_ci", "host", "method", "header"]
    exact: frozenset[str]
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule: any source AND any operation AND every condition."""

    policy_index: int
    index: int
    sources: tuple[Clause, ...]
    operations: tuple[Clause, ...]
    conditions: Clause
    index_key: IndexKey | None
    #: ``matches`` composed once at load from the clauses' specialized tests, so a request
    #: walks a few functions instead of the rule's tuples and clause objects.
    test: Callable[[Attributes], bool] = field(default=None, repr=False,  # type: ignore[assignment]
                                               compare=False)
    #: What is left to test once the index has found the rule through its key: ``test``
    #: without the operation field the key's hit already proves (see ``_implied_check``);
    #: ``test`` itself when the hit proves nothing. Built from shared pieces, so most rules'
    #: residual is one test object used by many rules (or ``_always``).
    residual: Callable[[Attributes], bool] = field(default=None, repr=False,  # type: ignore[assignment]
                                                   compare=False)

    def __post_init__(self) -> None:
        if self.test is None or self.residual is None:
            test, residual = _rule_tests(self.sources, self.operations, self.conditions,
                                         self.index_key, _Interner())
            object.__setattr__(self, "test", test)
            object.__setattr__(self, "residual", residual)

    @property
    def order(self) -> tuple[int, int]:
        """Evaluation order: policy load order, then rule position."""
        return (self.policy_index, self.index)

    def matches(self, attrs: Attributes) -> bool:
        """True if the rule matches the request."""
        return self.test(attrs)

    def explain(self, attrs: Attributes) -> str | None:
        """None if the rule matches, else the reason it does not (first failing part)."""
        for name, clauses in (("from", self.sources), ("to", self.operations)):
            if clauses and not any(c.matches(attrs) for c in clauses):
                reasons = []
                for clause in clauses:
                    failed = clause.first_failure(attrs)
                    if failed is not None:
                        reasons.append(failed.explain(attrs))
                return f"no '{name}' entry matches: " + "; ".join(reasons)
        failed = self.conditions.first_failure(attrs)
        if failed is not None:
            return f"'when' condition fails: {failed.explain(attrs)}"
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "from": [[c.describe() for c in s.checks] for s in self.sources],
            "to": [[c.describe() for c in o.checks] for o in self.operations],
            "when": [c.describe() for c in self.conditions.checks],
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled AuthorizationPolicy. ``rules is None`` means no rules (matches nothing)."""

    index: int
    namespace: str
    name: str
    action: Action
    selector: tuple[tuple[str, str], ...]
    rules: tuple[CompiledRule, ...]
    dry_run: bool
    file: str
    line: int | None
    deny_response: DenyResponse = DEFAULT_DENY
    case_insensitive_paths: bool = False

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: bounded by config, used in logs and metric labels."""
        return f"{self.namespace}/{self.name}"

    def rule_id(self, index: int) -> str:
        """Istio's ``ns[<ns>]-policy[<name>]-rule[<i>]`` naming."""
        return f"ns[{self.namespace}]-policy[{self.name}]-rule[{index}]"

    def applies_to(self, workload: Workload, root_namespace: str) -> bool:
        """Scope: same namespace (or the root namespace) and every selector label present."""
        if self.namespace not in (workload.namespace, root_namespace):
            return False
        return all(workload.labels.get(k) == v for k, v in self.selector)

    def describe(self) -> dict[str, Any]:
        """JSON-able form for ``/config``."""
        return {
            "namespace": self.namespace, "name": self.name, "action": self.action,
            "selector": dict(self.selector), "dry_run": self.dry_run,
            "source": f"{self.file}:{self.line}", "rules": [r.describe() for r in self.rules],
            "deny_status": self.deny_response.status,
            "case_insensitive_paths": self.case_insensitive_paths,
        }


@dataclass(frozen=True, slots=True)
class Authentication:
    """A compiled RequestAuthentication."""

    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]
    rules: tuple[JwtRule, ...]

    @property
    def key(self) -> str:
        """``<namespace>/<name>``."""
        return f"{self.namespace}/{self.name}"

    def applies_to(self, workload: Workload, root_namespace: str) -> bool:
        """Same scoping as AuthorizationPolicy."""
        if self.namespace not in (workload.namespace, root_namespace):
            return False
        return all(workload.labels.get(k) == v for k, v in self.selector)


_Test = Callable[[Attributes], bool]


def _always(attrs: Attributes) -> bool:
    return True


# Composed tests capture their parts as default arguments, not closure cells: a function and
# its defaults tuple are two objects where a closure is four (tuple and one cell per part), and
# with thousands of rules each object a request touches is likely a CPU-cache miss.


def _all_of(tests: Sequence[_Test]) -> _Test:
    """One test that passes when every one of ``tests`` does (in order, stopping early)."""
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        def both(attrs: Attributes, first: _Test = tests[0], second: _Test = tests[1]) -> bool:
            return first(attrs) and second(attrs)
        return both

    def every(attrs: Attributes, chain: tuple[_Test, ...] = tuple(tests)) -> bool:
        for test in chain:  # noqa: SIM110 - a plain loop beats all(genexpr) here
            if not test(attrs):
                return False
        return True
    return every


def _any_of(tests: Sequence[_Test]) -> _Test:
    """One test that passes when any of ``tests`` does (at least one test)."""
    if len(tests) == 1:
        return tests[0]

    def some(attrs: Attributes, options: tuple[_Test, ...] = tuple(tests)) -> bool:
        for test in options:  # noqa: SIM110 - a plain loop beats any(genexpr) here
            if test(attrs):
                return True
        return False
    return some


class _Interner:
    """Equal compiled pieces shared across every rule of one load.

    Rules repeat themselves (the same methods, principals, header values in thousands of
    rules); sharing getters, matchers, field tests and composed tests keeps the per-rule
    footprint small and the objects a request touches few and hot in the CPU cache. Sharing
    is by equality of what decides the answer (attribute read, matcher values and flags,
    polarity), so a shared test answers exactly as the rule's own would.
    """

    __slots__ = ("composed", "getters", "matchers", "tests")

    def __init__(self) -> None:
        self.getters: dict[Any, _Getter] = {}
        self.matchers: dict[Any, Any] = {}
        self.tests: dict[Any, _Test] = {}
        self.composed: dict[tuple[str, tuple[_Test, ...]], _Test] = {}

    def getter(self, key: tuple[str, Any]) -> _Getter:
        """The getter for ``("attr", name)``, ``("header", name)`` or ``("claim", path)``."""
        getter = self.getters.get(key)
        if getter is None:
            kind, arg = key
            if kind == "attr":
                getter = operator.attrgetter(arg)
            elif kind == "header":
                getter = _header_getter(arg)
            elif kind == "lines":
                getter = _header_lines_getter(arg)
            elif kind == "meta":
                getter = _metadata_getter(*arg)
            else:
                getter = _claim_getter(arg)
            self.getters[key] = getter
        return getter

    def matcher(self, matcher: Matcher) -> Matcher:
        """``matcher``, or the equal one already seen."""
        shared: Matcher = self.matchers.setdefault(matcher, matcher)
        return shared

    def test(self, key: Any) -> _Test | None:
        """The shared test for a field check's ``key``, if one was built."""
        return self.tests.get(key)

    def all_of(self, tests: Sequence[_Test]) -> _Test:
        """Shared ``_all_of`` (parts are shared already, so equal parts are the same objects)."""
        return self._compose("all", tuple(tests), _all_of)

    def any_of(self, tests: Sequence[_Test]) -> _Test:
        """Shared ``_any_of``."""
        return self._compose("any", tuple(tests), _any_of)

    def _compose(self, kind: str, parts: tuple[_Test, ...],
                 make: Callable[[Sequence[_Test]], _Test]) -> _Test:
        if len(parts) <= 1:
            return make(parts)
        key = (kind, parts)
        test = self.composed.get(key)
        if test is None:
            test = self.composed[key] = make(parts)
        return test


def _implied_check(operations: Sequence[Clause], key: IndexKey | None) -> FieldCheck | None:
    """The operation field that finding the rule through ``key`` proves, if any.

    The index finds a rule only by a value of its key that the request's attribute hits:
    equal to an exact value, starting with a prefix, ending with a suffix (the same tests the
    field's matcher makes, on the same attribute). With a single ``to`` entry that hit is the
    field's own match, so the field needs no second test. Not so for a template (the index
    only knows its literal head), for several ``to`` entries (the hit may come from another
    entry's values) or for header keys (presence is not the condition's value).
    """
    if key is None or key.dimension == "header" or len(operations) != 1:
        return None
    suffix = _DIMENSION_FIELDS[key.dimension]
    check = next((c for c in operations[0].checks
                  if c.field.endswith(suffix) and not c.negate), None)
    if check is None or not isinstance(check.matcher, StringMatch) or check.matcher.templates \
            or check.matcher.presence or check.many:
        return None
    return check


def _rule_tests(sources: Sequence[Clause], operations: Sequence[Clause], conditions: Clause,
                key: IndexKey | None, interner: _Interner) -> tuple[_Test, _Test]:
    """A rule's full test and its residual once found by ``key`` (see ``CompiledRule``)."""
    def parts(skip: FieldCheck | None) -> list[_Test]:
        out = []
        for clauses in (sources, operations):
            if clauses:
                options = []
                for clause in clauses:
                    options.append(interner.all_of([c.test for c in clause.checks
                                                    if c is not skip]))
                out.append(interner.any_of(options))
        out.extend(conditions.tests)
        return [p for p in out if p is not _always]

    test = interner.all_of(parts(None))
    implied = _implied_check(operations, key)
    return test, (test if implied is None else interner.all_of(parts(implied)))


class _PathIndex:
    """Rule positions by exact path, path prefix and path suffix.

    Prefixes are found without probing every prefix length (which grows with the number of
    distinct prefixes). Most end with "/" (``/static/*``, a template's head ``/api/v1/``): a
    path can only start with one of those at one of its own slashes, so they are probed there,
    one dict lookup per slash at a length some such prefix has (bounded by the path's depth).
    That only pays off among many prefixes: below ``SLASH_PROBE_MIN`` all are bisected. The
    others are kept sorted, and for each one the chain of other such prefixes it starts
    with. Every one of them that the path starts with is a prefix of the greatest that sorts at
    or before the path, so one bisection and a walk along that short chain find them all.
    """

    __slots__ = ("chains", "dir_lengths", "dir_max", "dir_prefix", "exact", "prefix",
                 "sorted_prefixes", "suffix", "suffix_lengths", "used")

    #: Prefix count from which "/"-ended prefixes are probed at the path's slashes rather than
    #: bisected (a few bisection steps over a small, cache-hot list are cheaper).
    SLASH_PROBE_MIN = 64

    def __init__(self) -> None:
        # Lists while adding; ``freeze`` turns them into tuples (one object less per probe).
        self.exact: dict[str, Any] = {}
        self.prefix: dict[str, Any] = {}
        self.suffix: dict[str, Any] = {}
        self.dir_prefix: dict[str, tuple[int, ...]] = {}
        self.dir_lengths: frozenset[int] = frozenset()
        self.dir_max = 0
        self.sorted_prefixes: list[str] = []
        self.chains: list[tuple[tuple[str, tuple[int, ...]], ...]] = []
        self.suffix_lengths: tuple[int, ...] = ()
        self.used = False

    def add(self, key: IndexKey, position: int) -> None:
        for value in key.exact:
            self.exact.setdefault(value, []).append(position)
        for value in key.prefixes:
            self.prefix.setdefault(value, []).append(position)
        for value in key.suffixes:
            self.suffix.setdefault(value, []).append(position)

    def freeze(self) -> None:
        for table in (self.exact, self.prefix, self.suffix):
            for value, positions in table.items():
                table[value] = tuple(positions)
        if len(self.prefix) >= self.SLASH_PROBE_MIN:
            self.dir_prefix = {p: v for p, v in self.prefix.items() if p.endswith("/")}
        self.dir_lengths = frozenset(len(p) for p in self.dir_prefix)
        self.dir_max = max(self.dir_lengths, default=0)
        self.sorted_prefixes = sorted(p for p in self.prefix if p not in self.dir_prefix)
        # In sorted order a prefix's own indexed prefixes come before it and stay on the stack
        # (anything sorting between q and a string starting with q starts with q too).
        stack: list[str] = []
        for value in self.sorted_prefixes:
            while stack and not value.startswith(stack[-1]):
                stack.pop()
            self.chains.append(tuple((p, tuple(self.prefix[p]))
                                     for p in (value, *reversed(stack))))
            stack.append(value)
        # Suffixes are few in practice (file extensions): one dict probe per distinct length.
        self.suffix_lengths = tuple(sorted({len(p) for p in self.suffix}))
        self.used = bool(self.exact or self.prefix or self.suffix)

    def collect(self, path: str, found: list[int]) -> None:
        hit = self.exact.get(path)
        if hit:
            found.extend(hit)
        if self.dir_max:
            lengths, table, limit = self.dir_lengths, self.dir_prefix, self.dir_max
            at = path.find("/")
            while 0 <= at < limit:
                at += 1
                if at in lengths:
                    hit = table.get(path[:at])
                    if hit:
                        found.extend(hit)
                at = path.find("/", at)
        if self.sorted_prefixes:
            at = bisect.bisect_right(self.sorted_prefixes, path)
            if at:
                for prefix, positions in self.chains[at - 1]:
                    if path.startswith(prefix):
                        found.extend(positions)
        if self.suffix_lengths:
            size = len(path)
            suffix = self.suffix
            for n in self.suffix_lengths:
                if n > size:
                    break
                hit = suffix.get(path[-n:])
                if hit:
                    found.extend(hit)


class RuleIndex:
    """Rules of one action, indexed so a request only evaluates rules that could match."""

    __slots__ = ("always", "header", "host", "method", "outcomes", "path", "path_ci", "rules",
                 "tests")

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self.rules = tuple(sorted(rules, key=lambda r: r.order))
        #: Per position, what a candidate still has to pass: the rule's residual (the index
        #: found it through its key) or, for rules without a key, its full test. Reached
        #: straight from the position, without touching the rule object.
        self.tests = tuple(r.test if r.index_key is None else r.residual for r in self.rules)
        #: The engine's shared result per rule position, filled on first match: reached
        #: straight from the position instead of through a dict keyed by rule.
        self.outcomes: list[Any] = [None] * len(self.rules)
        self.always: list[int] = []
        self.path = _PathIndex()
        self.path_ci = _PathIndex()
        self.host: dict[str, Any] = {}
        self.method: dict[str, Any] = {}
        self.header: dict[str, Any] = {}
        for i, rule in enumerate(self.rules):
            key = rule.index_key
            if key is None:
                self.always.append(i)
            elif key.dimension == "path":
                self.path.add(key, i)
            elif key.dimension == "path_ci":
                self.path_ci.add(key, i)
            else:
                # Host, method and header keys are exact values only (see _index_key).
                table = {"host": self.host, "method": self.method,
                         "header": self.header}[key.dimension]
                for value in key.exact:
                    table.setdefault(value, []).append(i)
        self.path.freeze()
        self.path_ci.freeze()
        for table in (self.host, self.method, self.header):
            for value, positions in table.items():
                table[value] = tuple(positions)

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, attrs: Attributes) -> list[int]:
        """Positions of rules that may match (a superset of the matching ones), in order."""
        found: list[int] = list(self.always)
        if self.path.used:
            self.path.collect(attrs.path, found)
        if self.path_ci.used:
            self.path_ci.collect(attrs.path_lower, found)
        if self.host:
            hit = self.host.get(attrs.host)
            if hit:
                found.extend(hit)
        if self.method:
            hit = self.method.get(attrs.method)
            if hit:
                found.extend(hit)
        if self.header:
            headers = attrs.headers
            for name, hit in self.header.items():
                if name in headers:
                    found.extend(hit)
        if len(found) > 1:
            found = sorted(set(found))
        return found

    def first_position(self, attrs: Attributes) -> int:
        """Position in ``rules`` of the first rule (policy/rule order) that matches, or -1."""
        tests = self.tests
        for i in self.candidates(attrs):
            if tests[i](attrs):
                return i
        return -1

    def first_match(self, attrs: Attributes) -> CompiledRule | None:
        """The first rule (in policy/rule order) that matches, or None."""
        i = self.first_position(attrs)
        return None if i < 0 else self.rules[i]


@dataclass(frozen=True, slots=True, eq=False)
class WorkloadView:
    """The policies that apply to one workload, ready for evaluation."""

    workload: Workload
    policies: tuple[Policy, ...]
    deny: RuleIndex
    allow: RuleIndex
    audit: RuleIndex
    has_allow: bool
    dry_deny: RuleIndex
    dry_allow: RuleIndex
    has_dry_allow: bool
    has_dry_run: bool
    jwt_rules: tuple[JwtRule, ...]
    #: Keys of the enforced ALLOW policies, named by default-deny logs (built once, not per deny).
    allow_policy_keys: tuple[str, ...] = ()


class PolicySet:
    """All loaded policies; ``view(context_extensions)`` gives a workload's compiled view."""

    #: Views kept per distinct workload identity; identities come from Envoy configs, so this
    #: is a safety bound, not a working-set limit.
    MAX_VIEWS = 4096

    def __init__(
        self,
        policies: Sequence[Policy],
        authentications: Sequence[Authentication] = (),
        *,
        root_namespace: str = "istio-system",
        default_namespace: str = "default",
        files: Sequence[str] = (),
        trust_domains: TrustDomains | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self.trust_domains = trust_domains or TrustDomains()
        self.authentications = tuple(authentications)
        self.root_namespace = root_namespace
        self.default_namespace = default_namespace
        self.files = tuple(files)
        self._views: dict[Any, WorkloadView] = {}
        #: Per-rule results the engine reuses (decisions are immutable; bounded by the config).
        self.memo: dict[Any, Any] = {}

    def policy(self, index: int) -> Policy:
        """The policy at load position ``index``."""
        return self.policies[index]

    def view(self, context_extensions: Mapping[str, str]) -> WorkloadView:
        """The memoized view for the workload named by ``context_extensions``."""
        key = frozenset(context_extensions.items()) if context_extensions else None
        view = self._views.get(key)
        if view is None:
            view = self.view_for(Workload.from_context(context_extensions, self.default_namespace))
            if len(self._views) >= self.MAX_VIEWS:
                self._views.clear()
            self._views[key] = view
        return view

    def view_for(self, workload: Workload) -> WorkloadView:
        """Build the view for ``workload`` (not memoized)."""
        applicable = tuple(p for p in self.policies if p.applies_to(workload, self.root_namespace))

        def rules(action: str, dry: bool) -> RuleIndex:
            return RuleIndex([
                r for p in applicable if p.action == action and p.dry_run == dry for r in p.rules
            ])

        jwt_rules = tuple(
            r for a in self.authentications if a.applies_to(workload, self.root_namespace)
            for r in a.rules
        )
        return WorkloadView(
            workload=workload,
            policies=applicable,
            deny=rules("DENY", False),
            allow=rules("ALLOW", False),
            audit=rules("AUDIT", False),
            has_allow=any(p.action == "ALLOW" and not p.dry_run for p in applicable),
            dry_deny=rules("DENY", True),
            dry_allow=rules("ALLOW", True),
            has_dry_allow=any(p.action == "ALLOW" and p.dry_run for p in applicable),
            has_dry_run=any(p.dry_run for p in applicable),
            jwt_rules=jwt_rules,
            allow_policy_keys=tuple(p.key for p in applicable
                                    if p.action == "ALLOW" and not p.dry_run),
        )

    @property
    def rule_count(self) -> int:
        """Total number of rules across all policies."""
        return sum(len(p.rules) for p in self.policies)

    def describe(self) -> dict[str, Any]:
        """JSON-able form for ``/config``."""
        return {
            "root_namespace": self.root_namespace,
            "default_namespace": self.default_namespace,
            "trust_domain": self.trust_domains.domain,
            "trust_domain_aliases": list(self.trust_domains.aliases),
            "files": list(self.files),
            "authorization_policies": [p.describe() for p in self.policies],
            "request_authentications": [
                {"namespace": a.namespace, "name": a.name, "selector": dict(a.selector),
                 "jwt_rules": [r.describe() for r in a.rules]}
                for a in self.authentications
            ],
        }


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------

_Getter = Callable[[Attributes], Any]

_UNSUPPORTED_KEYS = {
    "destination.namespace": "'destination.namespace' is replaced by metadata.namespace",
    "destination.labels": "'destination.labels' is replaced by the workload selector",
    "destination.name": "'destination.name' is not supported (v1alpha1 only)",
    "destination.user": "'destination.user' is not supported (v1alpha1 only)",
}

_SIMPLE_KEYS: dict[str, tuple[str, str]] = {
    # key -> (matcher kind, attribute name)
    "source.ip": ("ip", "source_ip"),
    "remote.ip": ("ip", "remote_ip"),
    "destination.ip": ("ip", "destination_ip"),
    "destination.port": ("port", "destination_port"),
    "source.namespace": ("namespace", "peer_names"),
    "source.principal": ("principal", "peer_names"),
    "source.serviceAccount": ("service_account", "peer_names"),
    "source.trustDomain": ("trust_domain", "peer_names"),
    "request.auth.principal": ("request_principal", "auth_iss_sub"),
    "request.auth.presenter": ("strings", "auth_presenters"),
    "request.auth.audiences": ("strings", "auth_audiences"),
    "connection.sni": ("string", "sni"),
}

EXPERIMENTAL_PREFIX = "experimental.envoy.filters."

SUPPORTED_CONDITION_KEYS = (
    "request.headers[<name>]", *_SIMPLE_KEYS, "request.auth.claims[<claim>][<nested>...]",
    EXPERIMENTAL_PREFIX + "<filter>[<key>]",
)


class _Compiler:
    """Turns one document's models into compiled objects, raising located ConfigErrors."""

    def __init__(self, doc: SourceDoc, base: tuple[str | int, ...], namespace: str,
                 ci_paths: bool, interner: _Interner | None = None,
                 trust: TrustDomains | None = None) -> None:
        self.doc = doc
        self.base = base
        self.namespace = namespace
        self.ci_paths = ci_paths
        self.interner = interner or _Interner()
        self.trust = trust or TrustDomains()

    def peer_matcher(self, kind: str, values: Sequence[str],
                     where: tuple[str | int, ...]) -> StringMatch:
        """The matcher over the peer's names for principals, namespaces, SAs, trust domains.

        Each is the regex or string matcher Istio generates for RBAC's ``authenticated``
        principal (trust-domain aliases applied as Istio's MigrateTrustDomain does).
        """
        for i, v in enumerate(values):
            if v == "":
                raise self.error("empty string is not a valid value", *where, i)
        if kind == "principal":
            return StringMatch.spiffe(self.trust.replace_aliases(values))
        if kind == "namespace":
            return StringMatch.regexes(values, [namespace_regex(v) for v in values])
        if kind == "service_account":
            for i, sa in enumerate(values):
                if "*" in sa or sa.count("/") > 1 or not sa.strip("/"):
                    raise self.error(
                        f"invalid service account '{sa}' (expected 'ns/sa' or 'sa', "
                        "no wildcards)", *where, i)
            return StringMatch.regexes(
                values, [service_account_regex(self.namespace, v) for v in values])
        expanded = self.trust.expand_aliases(values)
        prefixes, regexes = [], []
        for v in expanded:
            prefix, regex = trust_domain_pattern(v)
            if prefix is not None:
                prefixes.append(prefix)
            if regex is not None:
                regexes.append(regex)
        return StringMatch.regexes(expanded, regexes, prefixes)

    def error(self, message: str, *path: str | int) -> ConfigError:
        return self.doc.error(message, (*self.base, *path))

    def strings(self, values: Sequence[str], where: tuple[str | int, ...], *,
                ignore_case: bool = False, templates: bool = False) -> StringMatch:
        for i, v in enumerate(values):
            if v == "":
                raise self.error("empty string is not a valid value", *where, i)
        for i, v in enumerate(values):
            try:
                StringMatch.compile([v], ignore_case=ignore_case, templates=templates)
            except TemplateError as exc:
                raise self.error(str(exc), *where, i) from None
        return StringMatch.compile(values, ignore_case=ignore_case, templates=templates)

    def ips(self, values: Sequence[str], where: tuple[str | int, ...]) -> IpMatch:
        for i, v in enumerate(values):
            try:
                IpMatch.compile([v])
            except ValueError as exc:
                raise self.error(str(exc), *where, i) from None
        return IpMatch.compile(values)

    def ports(self, values: Sequence[str | int], where: tuple[str | int, ...]) -> PortMatch:
        for i, v in enumerate(values):
            try:
                PortMatch.compile([v])
            except ValueError as exc:
                raise self.error(str(exc), *where, i) from None
        return PortMatch.compile(values)

    def check(self, label: str, attribute: str, getter_key: tuple[str, Any], matcher: Matcher,
              negate: bool, many: bool = False) -> FieldCheck:
        # Equal checks (same value read, same matcher, same polarity) share one test.
        interner = self.interner
        matcher = interner.matcher(matcher)
        key = (getter_key, matcher, negate, many)
        shared = interner.test(key)
        check = FieldCheck(field=label, attribute=attribute, getter=interner.getter(getter_key),
                           matcher=matcher, negate=negate, many=many)
        if shared is None:
            interner.tests[key] = check.test
        else:
            object.__setattr__(check, "test", shared)
        return check

    def source(self, src: SourceModel, where: tuple[str | int, ...]) -> Clause:
        label = f"from[{where[-2]}].source" if len(where) >= 2 else "source"
        checks: list[FieldCheck] = []
        if (src.service_accounts or src.not_service_accounts) and (
            src.principals or src.not_principals or src.namespaces or src.not_namespaces
        ):
            raise self.error(
                "serviceAccounts cannot be combined with principals or namespaces",
                *where, "serviceAccounts" if src.service_accounts else "notServiceAccounts",
            )
        peer = ("attr", "peer_names")
        for name, alias, attr, kind, negate in (
            ("principals", "principals", "source.principal", "principal", False),
            ("not_principals", "notPrincipals", "source.principal", "principal", True),
            ("namespaces", "namespaces", "source.namespace", "namespace", False),
            ("not_namespaces", "notNamespaces", "source.namespace", "namespace", True),
            ("service_accounts", "serviceAccounts", "source.serviceAccount",
             "service_account", False),
            ("not_service_accounts", "notServiceAccounts", "source.serviceAccount",
             "service_account", True),
            ("trust_domains", "trustDomains", "source.trustDomain", "trust_domain", False),
            ("not_trust_domains", "notTrustDomains", "source.trustDomain", "trust_domain",
             True),
        ):
            values: list[str] = getattr(src, name)
            if values:
                checks.append(self.check(f"{label}.{alias}", attr, peer,
                                         self.peer_matcher(kind, values, (*where, alias)),
                                         negate, many=True))
        for name, alias, negate in (
            ("request_principals", "requestPrincipals", False),
            ("not_request_principals", "notRequestPrincipals", True),
        ):
            values = getattr(src, name)
            if values:
                self.strings(values, (*where, alias))  # validates (no empty values)
                checks.append(self.check(f"{label}.{alias}", "request.auth.principal",
                                         ("attr", "auth_iss_sub"),
                                         RequestPrincipalMatch.compile(values), negate))
        for name, alias, attr, negate in (
            ("ip_blocks", "ipBlocks", "source_ip", False),
            ("not_ip_blocks", "notIpBlocks", "source_ip", True),
            ("remote_ip_blocks", "remoteIpBlocks", "remote_ip", False),
            ("not_remote_ip_blocks", "notRemoteIpBlocks", "remote_ip", True),
        ):
            values = getattr(src, name)
            if values:
                checks.append(self.check(f"{label}.{alias}", attr.replace("_", "."),
                                         ("attr", attr),
                                         self.ips(values, (*where, alias)), negate))
        return Clause(tuple(checks))

    def operation(self, op: OperationModel, where: tuple[str | int, ...]) -> Clause:
        label = f"to[{where[-2]}].operation" if len(where) >= 2 else "operation"
        checks: list[FieldCheck] = []
        path_attr = "path_lower" if self.ci_paths else "path"
        for name, alias, attr, negate in (
            ("hosts", "hosts", "host", False), ("not_hosts", "notHosts", "host", True),
            ("methods", "methods", "method", False),
            ("not_methods", "notMethods", "method", True),
            ("paths", "paths", path_attr, False), ("not_paths", "notPaths", path_attr, True),
        ):
            values: list[str] = getattr(op, name)
            if not values:
                continue
            if attr == "host":
                matcher = self.strings(values, (*where, alias), ignore_case=True)
            elif attr == "method":
                matcher = self.strings(values, (*where, alias))
            else:
                # A path without a leading "/" is valid Istio: its builder emits the same
                # exact/prefix/suffix matcher, which (an exact or prefix one) simply never
                # matches a real path. Templates still must start with "/" (Envoy's rule).
                matcher = self.strings(values, (*where, alias), ignore_case=self.ci_paths,
                                       templates=True)
            checks.append(self.check(f"{label}.{alias}", f"request.{attr.split('_')[0]}",
                                     ("attr", attr), matcher, negate))
        for name, alias, negate in (("ports", "ports", False), ("not_ports", "notPorts", True)):
            values_p: list[str | int] = getattr(op, name)
            if values_p:
                checks.append(self.check(f"{label}.{alias}", "destination.port",
                                         ("attr", "destination_port"),
                                         self.ports(values_p, (*where, alias)), negate))
        return Clause(tuple(checks))

    def condition(self, cond: ConditionModel, where: tuple[str | int, ...]) -> list[FieldCheck]:
        key = cond.key.strip()
        label = f"when[{where[-1]}]"
        if not cond.values and not cond.not_values:
            raise self.error("condition needs at least one of values or notValues", *where)
        base_key = key.partition("[")[0]
        if base_key in _UNSUPPORTED_KEYS:
            raise self.error(f"unknown attribute: {_UNSUPPORTED_KEYS[base_key]}", *where, "key")
        getter: tuple[str, Any]
        many = False
        kind: str
        if key.startswith("request.headers[") and key.endswith("]"):
            header = key[len("request.headers["):-1].strip().lower()
            if not header:
                raise self.error("empty header name in condition key", *where, "key")
            getter = ("lines", header)
            kind, many = "header", True
        elif key.startswith("request.auth.claims[") and key.endswith("]"):
            inner = key[len("request.auth.claims["):-1]
            parts = inner.split("][")
            if not all(p.strip() for p in parts) or any("[" in p or "]" in p for p in parts):
                raise self.error(f"invalid claim key '{key}'", *where, "key")
            getter = ("claim", tuple(parts))
            kind, many = "string", True
        elif key.startswith(EXPERIMENTAL_PREFIX):
            # Istio's rule: "a[b]" with a non-empty b; the filter is everything before the
            # first "[", the key everything after it up to the final "]" (one path segment).
            open_at = key.find("[")
            if not (key.endswith("]") and 0 < open_at < len(key) - 2):
                raise self.error(f"bad key ({key}): should have format a[b]", *where, "key")
            getter = ("meta", (key[len("experimental."):open_at], key[open_at + 1:-1]))
            kind = "metadata"
        elif key in _SIMPLE_KEYS:
            kind, attr = _SIMPLE_KEYS[key]
            getter = ("attr", attr)
            if kind == "strings":
                kind, many = "string", True
            elif kind in ("principal", "namespace", "service_account", "trust_domain"):
                many = True
        else:
            raise self.error(
                f"unknown attribute '{key}' (supported: {', '.join(SUPPORTED_CONDITION_KEYS)})",
                *where, "key",
            )
        checks = []
        for values, alias, negate in ((cond.values, "values", False),
                                      (cond.not_values, "notValues", True)):
            if not values:
                continue
            matcher: Matcher
            if kind == "ip":
                matcher = self.ips([str(v) for v in values], (*where, alias))
            elif kind == "port":
                matcher = self.ports(values, (*where, alias))
            elif kind == "header":
                texts = [str(v) for v in values]
                self.strings(texts, (*where, alias))  # validates
                matcher = StringMatch.header(texts)
            elif kind == "metadata":
                texts = [str(v) for v in values]
                self.strings(texts, (*where, alias))
                matcher = MetadataMatch.compile(texts)
            elif kind == "request_principal":
                texts = [str(v) for v in values]
                self.strings(texts, (*where, alias))
                matcher = RequestPrincipalMatch.compile(texts)
            elif kind in ("principal", "namespace", "service_account", "trust_domain"):
                matcher = self.peer_matcher(kind, [str(v) for v in values], (*where, alias))
            else:
                matcher = self.strings([str(v) for v in values], (*where, alias))
            checks.append(self.check(f"{label}.{alias}", key, getter, matcher, negate, many))
        return checks

    def rule(self, model: RuleModel, policy_index: int, index: int) -> CompiledRule:
        where: tuple[str | int, ...] = ("spec", "rules", index)
        sources = tuple(self.source(f.source, (*where, "from", i, "source"))
                        for i, f in enumerate(model.from_))
        operations = tuple(self.operation(t.operation, (*where, "to", i, "operation"))
                           for i, t in enumerate(model.to))
        conditions: list[FieldCheck] = []
        for i, cond in enumerate(model.when):
            conditions.extend(self.condition(cond, (*where, "when", i)))
        when = Clause(tuple(conditions))
        key = _index_key(operations, when)
        test, residual = _rule_tests(sources, operations, when, key, self.interner)
        return CompiledRule(
            policy_index=policy_index, index=index, sources=sources, operations=operations,
            conditions=when, index_key=key, test=test, residual=residual,
        )


def _header_getter(name: str) -> _Getter:
    def get(attrs: Attributes) -> str | None:
        return attrs.headers.get(name)
    return get


def _header_lines_getter(name: str) -> _Getter:
    # Envoy's RBAC header matcher tests each line of a repeated header on its own (checked
    # with Envoy 1.40: `x-role: admin` + `x-role: guest` matches exact "guest", while the one
    # line `x-role: admin,guest` does not), so a header reads as its tuple of lines.
    def get(attrs: Attributes) -> tuple[str, ...]:
        lines = attrs.header_lines.get(name)
        if lines is not None:
            return lines
        value = attrs.headers.get(name)
        return () if value is None else (value,)
    return get


def _metadata_getter(namespace: str, key: str) -> _Getter:
    def get(attrs: Attributes) -> object:
        return attrs.request.metadata.get(namespace, {}).get(key)
    return get


def _claim_getter(path: tuple[str, ...]) -> _Getter:
    def get(attrs: Attributes) -> tuple[str, ...]:
        auth = attrs.auth
        if auth is None:
            return ()
        value: Any = auth.claims
        for part in path:
            if not isinstance(value, Mapping):
                return ()
            value = value.get(part)
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(v for v in value if isinstance(v, str))
        return ()
    return get


HEADER_KEY_PREFIX = "request.headers["
#: The operation field each index dimension comes from (``_operation_key``, ``_implied_check``).
_DIMENSION_FIELDS = {"path": ".paths", "path_ci": ".paths", "host": ".hosts",
                     "method": ".methods"}


def _index_key(operations: Sequence[Clause], conditions: Clause) -> IndexKey | None:
    """Pick a value the rule requires of one attribute (else: always evaluate the rule).

    First a dimension every ``to`` operation constrains positively (path, host, method), else a
    header a positive ``when`` condition needs present.
    """
    key = _operation_key(operations) if operations else None
    if key is not None:
        return key
    for check in conditions.checks:
        # A missing header fails a positive header condition (values never match "absent").
        if not check.negate and check.attribute.startswith(HEADER_KEY_PREFIX):
            name = check.attribute[len(HEADER_KEY_PREFIX):-1].strip().lower()
            return IndexKey(dimension="header", exact=frozenset([name]))
    return None


def _operation_key(operations: Sequence[Clause]) -> IndexKey | None:
    for dimension in ("path", "host", "method"):
        field_suffix = _DIMENSION_FIELDS[dimension]
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        ok = True
        ci = False
        for clause in operations:
            check = next((c for c in clause.checks
                          if c.field.endswith(field_suffix) and not c.negate), None)
            if check is None or not isinstance(check.matcher, StringMatch) \
                    or check.matcher.presence:
                ok = False
                break
            matcher = check.matcher
            if dimension != "path" and (matcher.index_prefixes or matcher.suffixes):
                ok = False
                break
            ci = ci or matcher.ignore_case
            exact.update(matcher.exact)
            prefixes.extend(matcher.index_prefixes)
            suffixes.extend(matcher.suffixes)
        if ok:
            dim: Literal["path", "path_ci", "host", "method"]
            dim = "path_ci" if dimension == "path" and ci else dimension
            return IndexKey(dimension=dim, exact=frozenset(exact), prefixes=tuple(prefixes),
                            suffixes=tuple(suffixes))
    return None


def _bool_annotation(doc: SourceDoc, annotations: Mapping[str, str], key: str,
                     base: tuple[str | int, ...]) -> bool:
    value = annotations.get(key)
    if value is None:
        return False
    if value.strip().lower() not in ("true", "false"):
        raise doc.error(f"annotation '{key}' must be \"true\" or \"false\", got '{value}'",
                        (*base, "metadata", "annotations", key))
    return value.strip().lower() == "true"


def _deny_response(doc: SourceDoc, annotations: Mapping[str, str], action: str,
                   base: tuple[str | int, ...]) -> DenyResponse:
    keys = [k for k in (DENY_STATUS_ANNOTATION, DENY_BODY_ANNOTATION, DENY_HEADERS_ANNOTATION)
            if k in annotations]
    if not keys:
        return DEFAULT_DENY
    where = (*base, "metadata", "annotations")
    if action != "DENY":
        raise doc.error(f"annotation '{keys[0]}' is only valid on DENY policies", (*where, keys[0]))
    status = 403
    raw_status = annotations.get(DENY_STATUS_ANNOTATION)
    if raw_status is not None:
        if not raw_status.strip().isdigit() or not 300 <= int(raw_status) <= 599:
            raise doc.error(f"deny status must be an HTTP status 300..599, got '{raw_status}'",
                            (*where, DENY_STATUS_ANNOTATION))
        status = int(raw_status)
    headers: list[tuple[str, str]] = []
    raw_headers = annotations.get(DENY_HEADERS_ANNOTATION)
    if raw_headers is not None:
        try:
            parsed = yaml.safe_load(raw_headers)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) for k, v in parsed.items()
        ):
            raise doc.error("deny headers must be a YAML/JSON mapping of header name to value",
                            (*where, DENY_HEADERS_ANNOTATION))
        headers = [(k.lower(), str(v)) for k, v in parsed.items()]
    body = annotations.get(DENY_BODY_ANNOTATION, DEFAULT_DENY.body)
    return DenyResponse(status=status, body=body, headers=tuple(headers))


def _scope(doc: SourceDoc, spec: AuthorizationPolicySpec | RequestAuthenticationSpec,
           base: tuple[str | int, ...]) -> tuple[tuple[str, str], ...]:
    if spec.target_ref is not None or spec.target_refs is not None:
        which = "targetRef" if spec.target_ref is not None else "targetRefs"
        raise doc.error(f"{which} is not supported (there is no Kubernetes here): use "
                        "selector.matchLabels with the workload labels the Envoy sends",
                        (*base, "spec", which))
    labels = spec.selector.match_labels if spec.selector else {}
    return tuple(sorted(labels.items()))


def _timeout_seconds(doc: SourceDoc, value: str | None, where: tuple[str | int, ...]) -> float:
    if value is None:
        return 5.0
    text = value.strip()
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000
        if text.endswith("s"):
            return float(text[:-1])
    except ValueError:
        pass
    raise doc.error(f"invalid duration '{value}' (expected e.g. '5s' or '500ms')", where)


def _compile_authn(doc: SourceDoc, resource: ResourceModel, namespace: str,
                   base: tuple[str | int, ...], root: Path) -> Authentication:
    try:
        spec = RequestAuthenticationSpec.model_validate(resource.spec)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc, (*base, "spec")) from None
    selector = _scope(doc, spec, base)
    key = f"{namespace}/{resource.metadata.name}"
    rules: list[JwtRule] = []
    for i, r in enumerate(spec.jwt_rules):
        where = (*base, "spec", "jwtRules", i)
        if not r.issuer.strip():
            raise doc.error("issuer must not be empty", (*where, "issuer"))
        if r.jwks and r.jwks_uri:
            raise doc.error("set only one of jwks and jwksUri", (*where, "jwksUri"))
        keys = None
        uri = None
        if r.jwks is not None:
            try:
                keys = parse_jwks(r.jwks)
            except JwksError as exc:
                raise doc.error(str(exc), (*where, "jwks")) from None
        elif r.jwks_uri is not None:
            uri = _resolve_uri(r.jwks_uri, root)
            if uri is None:
                raise doc.error(f"jwksUri '{r.jwks_uri}' must be file://, http:// or https://",
                                (*where, "jwksUri"))
            if uri.startswith("file://"):
                # A local key file is checked now, so a typo fails the load (and a reload keeps
                # the previous policies) instead of turning every token into a 401 later.
                try:
                    parse_jwks(Path(uri[len("file://"):]).read_text(encoding="utf-8"))
                except OSError as exc:
                    raise doc.error(f"cannot read jwksUri file: {exc.strerror or exc}",
                                    (*where, "jwksUri")) from None
                except JwksError as exc:
                    raise doc.error(f"jwksUri file: {exc}", (*where, "jwksUri")) from None
        else:
            raise doc.error("one of jwks or jwksUri is required (there is no OIDC discovery "
                            "here)", where)
        locations = [TokenLocation("header", h.name.lower(), h.prefix) for h in r.from_headers]
        locations += [TokenLocation("param", p) for p in r.from_params]
        locations += [TokenLocation("cookie", c) for c in r.from_cookies]
        if not locations:
            locations = [TokenLocation("header", "authorization", "Bearer "),
                         TokenLocation("param", "access_token")]
        rules.append(JwtRule(
            policy=key, index=i, issuer=r.issuer, audiences=frozenset(r.audiences),
            locations=tuple(locations), jwks=keys, jwks_uri=uri,
            output_payload_to_header=r.output_payload_to_header.lower()
            if r.output_payload_to_header else None,
            output_claim_to_headers=tuple((c.header.lower(), c.claim)
                                          for c in r.output_claim_to_headers),
            forward_original_token=r.forward_original_token,
            space_delimited_claims=DEFAULT_SPACE_DELIMITED | frozenset(r.space_delimited_claims),
            timeout=_timeout_seconds(doc, r.timeout, (*where, "timeout")),
        ))
    return Authentication(namespace=namespace, name=resource.metadata.name, selector=selector,
                          rules=tuple(rules))


def _resolve_uri(uri: str, root: Path) -> str | None:
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("file://"):
        raw = uri[len("file://"):]
        path = Path(raw)
        if not path.is_absolute():
            # Relative file URIs resolve against the policy file's directory.
            path = (root / path).resolve()
        return "file://" + str(path)
    return None


def _compile_policy(doc: SourceDoc, resource: ResourceModel, namespace: str,
                    base: tuple[str | int, ...], index: int,
                    interner: _Interner | None = None,
                    trust: TrustDomains | None = None) -> Policy:
    try:
        spec = AuthorizationPolicySpec.model_validate(resource.spec)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc, (*base, "spec")) from None
    if spec.action == "CUSTOM":
        raise doc.error(
            "action CUSTOM is not supported: this service is the external authorizer itself; "
            "write the rule as ALLOW or DENY", (*base, "spec", "action"))
    if spec.provider is not None:
        raise doc.error("provider is only valid with action CUSTOM", (*base, "spec", "provider"))
    selector = _scope(doc, spec, base)
    annotations = resource.metadata.annotations
    dry_run = _bool_annotation(doc, annotations, DRY_RUN_ANNOTATION, base)
    if dry_run and spec.action == "AUDIT":
        raise doc.error("istio.io/dry-run is only supported on ALLOW and DENY policies",
                        (*base, "metadata", "annotations", DRY_RUN_ANNOTATION))
    ci_paths = _bool_annotation(doc, annotations, CASE_INSENSITIVE_PATHS_ANNOTATION, base)
    compiler = _Compiler(doc, base, namespace, ci_paths, interner, trust)
    rules = tuple(compiler.rule(r, index, i) for i, r in enumerate(spec.rules or []))
    return Policy(
        index=index, namespace=namespace, name=resource.metadata.name, action=spec.action,
        selector=selector, rules=rules, dry_run=dry_run, file=doc.file,
        line=doc.line_of(base), deny_response=_deny_response(doc, annotations, spec.action, base),
        case_insensitive_paths=ci_paths,
    )


def _resources(doc: SourceDoc) -> Iterable[tuple[tuple[str | int, ...], Any]]:
    data = doc.data
    if (isinstance(data, dict) and data.get("kind") == "List"
            and isinstance(data.get("items"), list)):
        for i, item in enumerate(data["items"]):
            yield ("items", i), item
    else:
        yield (), data


def compile_documents(
    docs: Iterable[SourceDoc], *, default_namespace: str = "default",
    root_namespace: str = "istio-system", base_dir: Path | None = None,
    trust_domains: TrustDomains | None = None,
) -> PolicySet:
    """Compile YAML documents into a PolicySet; all errors found are raised together.

    ``base_dir`` resolves relative ``file://`` jwksUri values (default: the working directory);
    ``trust_domains`` is the mesh's trust domain and aliases (default ``cluster.local``).
    """
    root = base_dir or Path.cwd()
    policies: list[Policy] = []
    authns: list[Authentication] = []
    errors: list[ConfigError] = []
    seen: dict[tuple[str, str, str], str] = {}
    files: list[str] = []
    interner = _Interner()
    for doc in docs:
        if doc.file not in files:
            files.append(doc.file)
        for base, data in _resources(doc):
            if not isinstance(data, dict):
                errors.append(doc.error("a document must be a mapping (a Kubernetes resource)",
                                        base))
                continue
            kind = data.get("kind")
            if kind not in ("AuthorizationPolicy", "RequestAuthentication"):
                log_event(_log, "policy_document_skipped", logging.WARNING, file=doc.file,
                          line=doc.line_of(base), kind=kind)
                continue
            try:
                resource = ResourceModel.model_validate(data)
            except ValidationError as exc:
                errors.append(pydantic_errors(doc, exc, base))
                continue
            if resource.api_version not in API_VERSIONS:
                errors.append(doc.error(
                    f"unsupported apiVersion '{resource.api_version}' for {kind} (expected "
                    f"{' or '.join(API_VERSIONS)})", (*base, "apiVersion")))
                continue
            namespace = resource.metadata.namespace or default_namespace
            ident = (kind, namespace, resource.metadata.name)
            where = f"{doc.file}:{doc.line_of(base)}"
            if ident in seen:
                errors.append(doc.error(
                    f"duplicate {kind} {namespace}/{resource.metadata.name} (first defined at "
                    f"{seen[ident]})", (*base, "metadata", "name")))
                continue
            seen[ident] = where
            try:
                if kind == "AuthorizationPolicy":
                    policies.append(_compile_policy(doc, resource, namespace, base,
                                                    len(policies), interner, trust_domains))
                else:
                    authns.append(_compile_authn(doc, resource, namespace, base, root))
            except ConfigErrors as exc:
                errors.extend(exc.errors)
            except ConfigError as exc:
                errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return PolicySet(policies, authns, root_namespace=root_namespace,
                     default_namespace=default_namespace, files=files,
                     trust_domains=trust_domains)


def load_policies(
    path: Path, *, default_namespace: str = "default", root_namespace: str = "istio-system",
    trust_domains: TrustDomains | None = None,
) -> PolicySet:
    """Load a YAML file (several documents allowed) or a directory of them; raises ConfigError."""
    docs: list[SourceDoc] = []
    errors: list[ConfigError] = []
    for file in config_files(Path(path)):
        try:
            docs.extend(load_file(file))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    path = Path(path)
    return compile_documents(docs, default_namespace=default_namespace,
                             root_namespace=root_namespace, trust_domains=trust_domains,
                             base_dir=path if path.is_dir() else path.parent)


def load_text(text: str, file: str = "policy.yaml", **kwargs: Any) -> PolicySet:
    """Compile policies from YAML text (tests, ``explain`` with inline policies)."""
    from envoy_mixer.common.yamlsrc import load_documents

    return compile_documents(load_documents(text, file), **kwargs)


__all__ = [
    "Authentication", "CompiledRule", "DenyResponse", "Policy", "PolicySet", "RuleIndex",
    "WorkloadView", "compile_documents", "load_policies", "load_text",
]
