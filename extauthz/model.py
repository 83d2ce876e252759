"""The neutral policy model: what an AuthorizationPolicy says, free of YAML and of evaluation.

``extauthz.loader`` builds it from Istio's files (already validated: every value here is
well-formed); ``extauthz.compile`` turns it into evaluators and indexes, and a native RBAC
generator can read the same objects. It follows Istio's own translation model: a rule is any
``from`` entry AND any ``to`` entry AND every ``when`` condition; each entry is a list of
``Condition`` (attribute, values, not_values), where the attribute is Istio's name for what is
matched and a field and its ``notX`` twin become one condition:

==========================  ===============================  ===========================
Istio field                 ``Condition.attribute``          source
==========================  ===============================  ===========================
principals                  ``source.principal``             ``from[].source``
requestPrincipals           ``request.auth.principal``       ``from[].source``
namespaces                  ``source.namespace``             ``from[].source``
serviceAccounts             ``source.serviceAccount``        ``from[].source``
trustDomains                ``source.trustDomain``           ``from[].source``
ipBlocks                    ``source.ip``                    ``from[].source``
remoteIpBlocks              ``remote.ip``                    ``from[].source``
hosts                       ``:authority``                   ``to[].operation``
methods                     ``:method``                      ``to[].operation``
paths                       ``path-matcher``                 ``to[].operation``
ports                       ``destination.port``             ``to[].operation``
when ``key``                the key as written               ``when[]``
==========================  ===============================  ===========================

Values are strings exactly as written (ports too, as Istio's are). Everything is frozen and
slotted: a 10,000-rule set is a few hundred thousand of these, shared by every reload reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from extauthz.jwt import JwtRule
from extauthz.request import Workload

Action = Literal["ALLOW", "DENY", "AUDIT"]

# Istio's attribute names (its authz model's constants), the keys of every ``Condition``.
SOURCE_PRINCIPAL = "source.principal"
SOURCE_NAMESPACE = "source.namespace"
SOURCE_SERVICE_ACCOUNT = "source.serviceAccount"
SOURCE_TRUST_DOMAIN = "source.trustDomain"
SOURCE_IP = "source.ip"
REMOTE_IP = "remote.ip"
REQUEST_PRINCIPAL = "request.auth.principal"
HOST = ":authority"
METHOD = ":method"
PATH = "path-matcher"
DESTINATION_PORT = "destination.port"
HEADER_PREFIX = "request.headers["


@dataclass(frozen=True, slots=True)
class Condition:
    """One attribute's constraint: some of ``values`` match AND none of ``not_values`` does."""

    attribute: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @property
    def header(self) -> str | None:
        """The lower-cased header name of a ``request.headers[<name>]`` condition, else None."""
        if self.attribute.startswith(HEADER_PREFIX) and self.attribute.endswith("]"):
            return self.attribute[len(HEADER_PREFIX):-1].strip().lower()
        return None


@dataclass(frozen=True, slots=True)
class SourceModel:
    """One ``from`` entry: every condition must hold."""

    conditions: tuple[Condition, ...] = ()

    def get(self, attribute: str) -> Condition | None:
        """The condition on ``attribute``, if the entry has one."""
        return next((c for c in self.conditions if c.attribute == attribute), None)


@dataclass(frozen=True, slots=True)
class OperationModel:
    """One ``to`` entry: every condition must hold."""

    conditions: tuple[Condition, ...] = ()

    def get(self, attribute: str) -> Condition | None:
        """The condition on ``attribute``, if the entry has one."""
        return next((c for c in self.conditions if c.attribute == attribute), None)


@dataclass(frozen=True, slots=True)
class RuleModel:
    """One rule: any ``from_`` AND any ``to`` AND every ``when`` (an empty list is no constraint).

    ``name`` is Istio's ``ns[<ns>]-policy[<name>]-rule[<i>]``, the rule's name in RBAC stats,
    logs and decisions.
    """

    name: str
    index: int
    from_: tuple[SourceModel, ...] = ()
    to: tuple[OperationModel, ...] = ()
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class DenyResponse:
    """The opt-in custom deny response of a DENY policy."""

    status: int = 403
    body: str = "RBAC: access denied"
    headers: tuple[tuple[str, str], ...] = ()


DEFAULT_DENY = DenyResponse()


def applies(namespace: str, selector: tuple[tuple[str, str], ...], workload: Workload,
            root_namespace: str) -> bool:
    """Istio's scope: same namespace (or the root namespace) and every selector label present."""
    if namespace not in (workload.namespace, root_namespace):
        return False
    return all(workload.labels.get(k) == v for k, v in selector)


@dataclass(frozen=True, slots=True)
class PolicyModel:
    """One AuthorizationPolicy. No rules (``rules: []`` or absent) matches nothing."""

    namespace: str
    name: str
    action: Action
    selector: tuple[tuple[str, str], ...] = ()
    rules: tuple[RuleModel, ...] = ()
    dry_run: bool = False
    deny_response: DenyResponse = DEFAULT_DENY
    #: ``authz.envoy-mixer.io/case-insensitive-paths``: paths compare lower-cased.
    case_insensitive_paths: bool = False
    file: str = ""
    line: int | None = None

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: bounded by config, used in logs and metric labels."""
        return f"{self.namespace}/{self.name}"

    def applies_to(self, workload: Workload, root_namespace: str) -> bool:
        """True if the policy is in scope for ``workload``."""
        return applies(self.namespace, self.selector, workload, root_namespace)


def rule_name(namespace: str, policy: str, index: int) -> str:
    """Istio's ``ns[<ns>]-policy[<name>]-rule[<i>]`` naming."""
    return f"ns[{namespace}]-policy[{policy}]-rule[{index}]"


@dataclass(frozen=True, slots=True)
class Authentication:
    """One RequestAuthentication: its scope and its JWT rules."""

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
        return applies(self.namespace, self.selector, workload, root_namespace)


@dataclass(frozen=True, slots=True)
class ModelSet:
    """Every policy and authentication of one load, in load order, with the files read."""

    policies: tuple[PolicyModel, ...] = ()
    authentications: tuple[Authentication, ...] = ()
    files: tuple[str, ...] = ()


__all__ = [
    "DEFAULT_DENY", "DESTINATION_PORT", "HOST", "METHOD", "PATH", "REMOTE_IP",
    "REQUEST_PRINCIPAL", "SOURCE_IP", "SOURCE_NAMESPACE", "SOURCE_PRINCIPAL",
    "SOURCE_SERVICE_ACCOUNT", "SOURCE_TRUST_DOMAIN", "Action", "Authentication", "Condition",
    "DenyResponse", "ModelSet", "OperationModel", "PolicyModel", "RuleModel", "SourceModel",
    "applies", "rule_name",
]
