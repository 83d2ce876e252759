"""The neutral model -> evaluators: compiled rules and policies, ready for the indexes.

Each ``Condition`` becomes one ``FieldCheck`` per polarity (its values, its not_values): a
matcher built once (sets, prefix/suffix tuples, CIDR networks, path templates, Istio's regexes
for principals and namespaces) bound to the request attribute it reads. A rule's checks are
composed into one test function, plus a residual test for when the index already proved its
key. Equal pieces are shared across the whole load (``_Interner``), so 10,000 rules that repeat
the same methods and principals hold a few hundred test objects, not tens of thousands.

Compiling never fails: ``extauthz.loader`` validated every value of the model.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extauthz.index import IndexKey, implied_check, index_key
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
    namespace_regex,
    service_account_regex,
    trust_domain_pattern,
)
from extauthz.model import (
    DESTINATION_PORT,
    HOST,
    METHOD,
    PATH,
    REMOTE_IP,
    REQUEST_PRINCIPAL,
    SOURCE_IP,
    SOURCE_NAMESPACE,
    SOURCE_PRINCIPAL,
    SOURCE_SERVICE_ACCOUNT,
    SOURCE_TRUST_DOMAIN,
    Condition,
    DenyResponse,
    PolicyModel,
    RuleModel,
    rule_name,
)
from extauthz.request import Workload
from extauthz.trustdomain import TrustDomains


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """One rule: any source AND any operation AND every condition.

    Compared and hashed by identity (``eq=False``): a rule is one object per load, and the
    engine's decision cache keys by it.
    """

    policy_index: int
    index: int
    #: Istio's ``ns[<ns>]-policy[<name>]-rule[<i>]``.
    name: str
    sources: tuple[Clause, ...]
    operations: tuple[Clause, ...]
    conditions: Clause
    index_key: IndexKey | None
    #: ``matches`` composed once at load from the clauses' specialized tests, so a request
    #: walks a few functions instead of the rule's tuples and clause objects.
    test: Callable[[Attributes], bool] = field(repr=False)
    #: What is left to test once the index has found the rule through its key: ``test``
    #: without the operation field the key's hit already proves (see ``index.implied_check``);
    #: ``test`` itself when the hit proves nothing. Built from shared pieces, so most rules'
    #: residual is one test object used by many rules (or ``_always``).
    residual: Callable[[Attributes], bool] = field(repr=False)

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


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """A compiled AuthorizationPolicy: its model, its load position and its compiled rules."""

    index: int
    model: PolicyModel
    rules: tuple[CompiledRule, ...]

    @property
    def namespace(self) -> str:
        """The policy's namespace."""
        return self.model.namespace

    @property
    def name(self) -> str:
        """The policy's name."""
        return self.model.name

    @property
    def action(self) -> str:
        """ALLOW, DENY or AUDIT."""
        return self.model.action

    @property
    def selector(self) -> tuple[tuple[str, str], ...]:
        """``matchLabels`` as sorted pairs."""
        return self.model.selector

    @property
    def dry_run(self) -> bool:
        """``istio.io/dry-run``: evaluated and reported, never enforced."""
        return self.model.dry_run

    @property
    def deny_response(self) -> DenyResponse:
        """What a matching DENY answers."""
        return self.model.deny_response

    @property
    def case_insensitive_paths(self) -> bool:
        """Paths compare lower-cased."""
        return self.model.case_insensitive_paths

    @property
    def file(self) -> str:
        """The file the policy came from."""
        return self.model.file

    @property
    def line(self) -> int | None:
        """Its line in ``file``."""
        return self.model.line

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: bounded by config, used in logs and metric labels."""
        return self.model.key

    def rule_id(self, index: int) -> str:
        """Istio's ``ns[<ns>]-policy[<name>]-rule[<i>]`` naming."""
        return rule_name(self.namespace, self.name, index)

    def applies_to(self, workload: Workload, root_namespace: str) -> bool:
        """Scope: same namespace (or the root namespace) and every selector label present."""
        return self.model.applies_to(workload, root_namespace)

    def describe(self) -> dict[str, Any]:
        """JSON-able form for ``/config``."""
        return {
            "namespace": self.namespace, "name": self.name, "action": self.action,
            "selector": dict(self.selector), "dry_run": self.dry_run,
            "source": f"{self.file}:{self.line}", "rules": [r.describe() for r in self.rules],
            "deny_status": self.deny_response.status,
            "case_insensitive_paths": self.case_insensitive_paths,
        }


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

    __slots__ = ("checks", "composed", "entries", "getters", "matchers", "tests")

    def __init__(self) -> None:
        self.getters: dict[Any, _Getter] = {}
        #: By (how values compile, the values, what else the matcher depends on): equal keys
        #: build equal matchers, and a tuple of strings hashes far faster than a matcher.
        self.matchers: dict[Any, Matcher] = {}
        #: By (value read, matcher key, polarity, list-valued): one test per distinct check.
        self.tests: dict[Any, _Test] = {}
        #: Whole checks and whole ``from``/``to`` entries, for rules that repeat them.
        self.checks: dict[Any, FieldCheck] = {}
        self.entries: dict[Any, Clause] = {}
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


def rule_tests(sources: Sequence[Clause], operations: Sequence[Clause], conditions: Clause,
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
    implied = implied_check(operations, key)
    return test, (test if implied is None else interner.all_of(parts(implied)))

_Getter = Callable[[Attributes], Any]

#: Per model attribute of a ``from``/``to`` entry: the schema field names of its values and
#: not_values (what ``explain`` calls the check), the attribute shown, the value read, how
#: values compile, and whether the value read is a list (any element may match).
_ENTRY_FIELDS: dict[str, tuple[str, str, str, tuple[str, Any], str, bool]] = {
    SOURCE_PRINCIPAL: ("principals", "notPrincipals", "source.principal",
                       ("attr", "peer_names"), "principal", True),
    SOURCE_NAMESPACE: ("namespaces", "notNamespaces", "source.namespace",
                       ("attr", "peer_names"), "namespace", True),
    SOURCE_SERVICE_ACCOUNT: ("serviceAccounts", "notServiceAccounts", "source.serviceAccount",
                             ("attr", "peer_names"), "service_account", True),
    SOURCE_TRUST_DOMAIN: ("trustDomains", "notTrustDomains", "source.trustDomain",
                          ("attr", "peer_names"), "trust_domain", True),
    REQUEST_PRINCIPAL: ("requestPrincipals", "notRequestPrincipals", "request.auth.principal",
                        ("attr", "auth_iss_sub"), "request_principal", False),
    SOURCE_IP: ("ipBlocks", "notIpBlocks", "source.ip", ("attr", "source_ip"), "ip", False),
    REMOTE_IP: ("remoteIpBlocks", "notRemoteIpBlocks", "remote.ip", ("attr", "remote_ip"),
                "ip", False),
    HOST: ("hosts", "notHosts", "request.host", ("attr", "host"), "host", False),
    METHOD: ("methods", "notMethods", "request.method", ("attr", "method"), "string", False),
    PATH: ("paths", "notPaths", "request.path", ("attr", "path"), "path", False),
    DESTINATION_PORT: ("ports", "notPorts", "destination.port", ("attr", "destination_port"),
                       "port", False),
}

#: ``when`` keys without an argument: (value read, how values compile, list-valued).
_SIMPLE_KEYS: dict[str, tuple[tuple[str, Any], str, bool]] = {
    SOURCE_IP: (("attr", "source_ip"), "ip", False),
    REMOTE_IP: (("attr", "remote_ip"), "ip", False),
    "destination.ip": (("attr", "destination_ip"), "ip", False),
    DESTINATION_PORT: (("attr", "destination_port"), "port", False),
    SOURCE_NAMESPACE: (("attr", "peer_names"), "namespace", True),
    SOURCE_PRINCIPAL: (("attr", "peer_names"), "principal", True),
    SOURCE_SERVICE_ACCOUNT: (("attr", "peer_names"), "service_account", True),
    SOURCE_TRUST_DOMAIN: (("attr", "peer_names"), "trust_domain", True),
    REQUEST_PRINCIPAL: (("attr", "auth_iss_sub"), "request_principal", False),
    "request.auth.presenter": (("attr", "auth_presenters"), "string", True),
    "request.auth.audiences": (("attr", "auth_audiences"), "string", True),
    "connection.sni": (("attr", "sni"), "string", False),
}

_HEADER_PREFIX = "request.headers["
_CLAIM_PREFIX = "request.auth.claims["
_EXPERIMENTAL_PREFIX = "experimental.envoy.filters."


#: The ``when`` of every rule without conditions (most of them): one shared object.
_NO_CONDITIONS = Clause(())


class _Compiler:
    """Compiles the rules of one policy (its namespace, path case and the mesh's trust)."""

    __slots__ = ("ci_paths", "interner", "namespace", "trust")

    def __init__(self, namespace: str, ci_paths: bool, interner: _Interner,
                 trust: TrustDomains) -> None:
        self.namespace = namespace
        self.ci_paths = ci_paths
        self.interner = interner
        self.trust = trust

    def matcher(self, kind: str, values: Sequence[str]) -> Matcher:
        """The matcher Istio's generators build for ``values`` of this ``kind``."""
        if kind == "principal":
            return StringMatch.spiffe(self.trust.replace_aliases(values))
        if kind == "namespace":
            return StringMatch.regexes(values, [namespace_regex(v) for v in values])
        if kind == "service_account":
            return StringMatch.regexes(
                values, [service_account_regex(self.namespace, v) for v in values])
        if kind == "trust_domain":
            # Trust-domain aliases applied as Istio's MigrateTrustDomain does.
            expanded = self.trust.expand_aliases(values)
            prefixes, regexes = [], []
            for v in expanded:
                prefix, regex = trust_domain_pattern(v)
                if prefix is not None:
                    prefixes.append(prefix)
                if regex is not None:
                    regexes.append(regex)
            return StringMatch.regexes(expanded, regexes, prefixes)
        if kind == "request_principal":
            return RequestPrincipalMatch.compile(values)
        if kind == "ip":
            return IpMatch.compile(values)
        if kind == "port":
            return PortMatch.compile(values)
        if kind == "host":
            return StringMatch.compile(values, ignore_case=True)
        if kind == "path":
            return StringMatch.compile(values, ignore_case=self.ci_paths, templates=True)
        if kind == "header":
            return StringMatch.header(values)
        if kind == "metadata":
            return MetadataMatch.compile(values)
        return StringMatch.compile(values)

    def check(self, label: str, shown: str, key: str, getter_key: tuple[str, Any], kind: str,
              values: tuple[str, ...], negate: bool, many: bool) -> FieldCheck:
        """The check of ``values`` on one attribute, shared with every equal one of the load."""
        interner = self.interner
        extra = self.namespace if kind == "service_account" else \
            self.ci_paths if kind == "path" else None
        matcher_key = (kind, values, extra)
        full_key = (label, shown, key, getter_key, matcher_key, negate, many)
        check = interner.checks.get(full_key)
        if check is not None:
            return check
        matcher = interner.matchers.get(matcher_key)
        if matcher is None:
            matcher = interner.matchers[matcher_key] = self.matcher(kind, values)
        test_key = (getter_key, matcher_key, negate, many)
        shared = interner.tests.get(test_key)
        check = FieldCheck(field=label, attribute=shown, getter=interner.getter(getter_key),
                           matcher=matcher, negate=negate, many=many, key=key,
                           test=shared)  # type: ignore[arg-type]
        if shared is None:
            interner.tests[test_key] = check.test
        interner.checks[full_key] = check
        return check

    def entry(self, label: str, conditions: tuple[Condition, ...]) -> Clause:
        """One ``from``/``to`` entry: its conditions' checks, values before not_values."""
        entry_key = (label, conditions, self.ci_paths, self.namespace)
        clause = self.interner.entries.get(entry_key)
        if clause is not None:
            return clause
        checks = []
        for cond in conditions:
            alias, not_alias, shown, getter, kind, many = _ENTRY_FIELDS[cond.attribute]
            if kind == "path" and self.ci_paths:
                getter = ("attr", "path_lower")
            for values, name, negate in ((cond.values, alias, False),
                                         (cond.not_values, not_alias, True)):
                if values:
                    checks.append(self.check(f"{label}.{name}", shown, cond.attribute, getter,
                                             kind, values, negate, many))
        clause = self.interner.entries[entry_key] = Clause(tuple(checks))
        return clause

    def condition(self, index: int, cond: Condition) -> list[FieldCheck]:
        """One ``when`` condition's checks."""
        key = cond.attribute
        getter: tuple[str, Any]
        if key.startswith(_HEADER_PREFIX) and key.endswith("]"):
            getter, kind, many = ("lines", key[len(_HEADER_PREFIX):-1].strip().lower()), \
                "header", True
        elif key.startswith(_CLAIM_PREFIX) and key.endswith("]"):
            getter = ("claim", tuple(key[len(_CLAIM_PREFIX):-1].split("][")))
            kind, many = "string", True
        elif key.startswith(_EXPERIMENTAL_PREFIX):
            open_at = key.find("[")
            getter = ("meta", (key[len("experimental."):open_at], key[open_at + 1:-1]))
            kind, many = "metadata", False
        else:
            getter, kind, many = _SIMPLE_KEYS[key]
        checks = []
        for values, alias, negate in ((cond.values, "values", False),
                                      (cond.not_values, "notValues", True)):
            if values:
                checks.append(self.check(f"when[{index}].{alias}", key, key, getter, kind,
                                         values, negate, many))
        return checks

    def rule(self, model: RuleModel, policy_index: int) -> CompiledRule:
        """One compiled rule, its index key and its composed tests."""
        sources = tuple(self.entry(f"from[{i}].source", s.conditions)
                        for i, s in enumerate(model.from_))
        operations = tuple(self.entry(f"to[{i}].operation", o.conditions)
                           for i, o in enumerate(model.to))
        when = Clause(tuple(check for i, cond in enumerate(model.when)
                            for check in self.condition(i, cond))) if model.when else _NO_CONDITIONS
        key = index_key(operations, when)
        test, residual = rule_tests(sources, operations, when, key, self.interner)
        return CompiledRule(
            policy_index=policy_index, index=model.index, name=model.name, sources=sources,
            operations=operations, conditions=when, index_key=key, test=test,
            residual=residual,
        )


class PolicyCompiler:
    """Compiles the policies of one load, sharing equal pieces across all of them."""

    __slots__ = ("_interner", "trust")

    def __init__(self, trust: TrustDomains | None = None) -> None:
        self.trust = trust or TrustDomains()
        self._interner = _Interner()

    def policy(self, model: PolicyModel, index: int) -> Policy:
        """``model`` compiled, at load position ``index``."""
        compiler = _Compiler(model.namespace, model.case_insensitive_paths, self._interner,
                             self.trust)
        return Policy(index=index, model=model,
                      rules=tuple(compiler.rule(r, index) for r in model.rules))


def compile_policies(models: Sequence[PolicyModel],
                     trust: TrustDomains | None = None) -> tuple[Policy, ...]:
    """Every policy of a load compiled, in load order."""
    compiler = PolicyCompiler(trust)
    return tuple(compiler.policy(m, i) for i, m in enumerate(models))


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

__all__ = ["CompiledRule", "Policy", "PolicyCompiler", "compile_policies", "rule_tests"]
