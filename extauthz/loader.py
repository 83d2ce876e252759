"""Istio policy files -> the validated neutral model (``extauthz.model``).

YAML documents (``envoy_mixer.common.yamlsrc``, ``kind: List`` unwrapped) -> the CRD schema
(``extauthz.schema``) -> ``PolicyModel`` / ``Authentication``. Every error names file, line and
field, and all errors of a load are raised together; what is checked here (values well-formed,
supported keys, annotations, duplicates across files) is everything that can be wrong, so
compiling the model never fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.logs import log_event
from envoy_mixer.common.yamlsrc import (
    SourceDoc,
    config_files,
    load_documents,
    paused_gc,
    pydantic_errors,
    resources,
    stream_file,
)
from extauthz.authn import authentication_model
from extauthz.matchers import IpMatch, PortMatch, TemplateError, template_regex
from extauthz.model import (
    DEFAULT_DENY,
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
    Authentication,
    Condition,
    DenyResponse,
    ModelSet,
    OperationModel,
    PolicyModel,
    RuleModel,
    SourceModel,
    rule_name,
)
from extauthz.schema import (
    API_VERSIONS,
    CASE_INSENSITIVE_PATHS_ANNOTATION,
    DENY_BODY_ANNOTATION,
    DENY_HEADERS_ANNOTATION,
    DENY_STATUS_ANNOTATION,
    DRY_RUN_ANNOTATION,
    AuthorizationPolicySpec,
    ConditionSpec,
    OperationSpec,
    RequestAuthenticationSpec,
    ResourceSpec,
    RuleSpec,
    SourceSpec,
)

_log = logging.getLogger("extauthz.loader")

Where = tuple[str | int, ...]

#: ``from[].source`` fields in evaluation order: (positive alias, negative alias, attribute,
#: how values are checked). The compiler reads the same table back (``SOURCE_FIELDS``).
SOURCE_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("principals", "notPrincipals", SOURCE_PRINCIPAL, "string"),
    ("namespaces", "notNamespaces", SOURCE_NAMESPACE, "string"),
    ("serviceAccounts", "notServiceAccounts", SOURCE_SERVICE_ACCOUNT, "service_account"),
    ("trustDomains", "notTrustDomains", SOURCE_TRUST_DOMAIN, "string"),
    ("requestPrincipals", "notRequestPrincipals", REQUEST_PRINCIPAL, "string"),
    ("ipBlocks", "notIpBlocks", SOURCE_IP, "ip"),
    ("remoteIpBlocks", "notRemoteIpBlocks", REMOTE_IP, "ip"),
)
#: ``to[].operation`` fields, likewise.
OPERATION_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("hosts", "notHosts", HOST, "string"),
    ("methods", "notMethods", METHOD, "string"),
    ("paths", "notPaths", PATH, "path"),
    ("ports", "notPorts", DESTINATION_PORT, "port"),
)

_UNSUPPORTED_KEYS = {
    "destination.namespace": "'destination.namespace' is replaced by metadata.namespace",
    "destination.labels": "'destination.labels' is replaced by the workload selector",
    "destination.name": "'destination.name' is not supported (v1alpha1 only)",
    "destination.user": "'destination.user' is not supported (v1alpha1 only)",
}

#: ``when`` keys without an argument -> how their values are checked.
SIMPLE_KEYS: dict[str, str] = {
    SOURCE_IP: "ip", REMOTE_IP: "ip", "destination.ip": "ip", DESTINATION_PORT: "port",
    SOURCE_NAMESPACE: "string", SOURCE_PRINCIPAL: "string",
    SOURCE_SERVICE_ACCOUNT: "service_account", SOURCE_TRUST_DOMAIN: "string",
    REQUEST_PRINCIPAL: "string", "request.auth.presenter": "string",
    "request.auth.audiences": "string", "connection.sni": "string",
}

EXPERIMENTAL_PREFIX = "experimental.envoy.filters."
CLAIM_PREFIX = "request.auth.claims["
HEADER_PREFIX = "request.headers["

SUPPORTED_CONDITION_KEYS = (
    "request.headers[<name>]", *SIMPLE_KEYS, "request.auth.claims[<claim>][<nested>...]",
    EXPERIMENTAL_PREFIX + "<filter>[<key>]",
)


class _Validator:
    """Checks one policy document's values, raising ConfigErrors located at the field."""

    __slots__ = ("base", "doc")

    def __init__(self, doc: SourceDoc, base: Where) -> None:
        self.doc = doc
        self.base = base

    def error(self, message: str, *path: str | int) -> ConfigError:
        return self.doc.error(message, (*self.base, *path))

    def values(self, kind: str, raw: Sequence[str | int], where: Where) -> tuple[str, ...]:
        """``raw`` as strings, each checked as ``kind`` ("string", "path", "ip", "port", ...)."""
        texts = tuple(str(v) for v in raw)
        if kind == "port":
            for i, v in enumerate(raw):
                try:
                    PortMatch.compile([v])
                except ValueError as exc:
                    raise self.error(str(exc), *where, i) from None
            return texts
        if kind == "ip":
            for i, v in enumerate(texts):
                try:
                    IpMatch.compile([v])
                except ValueError as exc:
                    raise self.error(str(exc), *where, i) from None
            return texts
        for i, v in enumerate(texts):
            if v == "":
                raise self.error("empty string is not a valid value", *where, i)
        if kind == "path":
            for i, v in enumerate(texts):
                # A path without a leading "/" is valid Istio (its exact/prefix/suffix matcher
                # simply never matches); templates must start with "/" (Envoy's rule).
                if "{" in v or "}" in v:
                    try:
                        template_regex(v)
                    except TemplateError as exc:
                        raise self.error(str(exc), *where, i) from None
        elif kind == "service_account":
            for i, sa in enumerate(texts):
                if "*" in sa or sa.count("/") > 1 or not sa.strip("/"):
                    raise self.error(
                        f"invalid service account '{sa}' (expected 'ns/sa' or 'sa', "
                        "no wildcards)", *where, i)
        return texts

    def fields(self, spec: SourceSpec | OperationSpec,
               table: tuple[tuple[str, str, str, str], ...], where: Where) -> tuple[Condition, ...]:
        out = []
        for alias, not_alias, attribute, kind in table:
            values = getattr(spec, _attr(alias))
            not_values = getattr(spec, _attr(not_alias))
            if values or not_values:
                out.append(Condition(attribute, self.values(kind, values, (*where, alias)),
                                     self.values(kind, not_values, (*where, not_alias))))
        return tuple(out)

    def source(self, src: SourceSpec, where: Where) -> SourceModel:
        if (src.service_accounts or src.not_service_accounts) and (
            src.principals or src.not_principals or src.namespaces or src.not_namespaces
        ):
            raise self.error(
                "serviceAccounts cannot be combined with principals or namespaces",
                *where, "serviceAccounts" if src.service_accounts else "notServiceAccounts",
            )
        return SourceModel(self.fields(src, SOURCE_FIELDS, where))

    def operation(self, op: OperationSpec, where: Where) -> OperationModel:
        return OperationModel(self.fields(op, OPERATION_FIELDS, where))

    def condition(self, cond: ConditionSpec, where: Where) -> Condition:
        key = cond.key.strip()
        if not cond.values and not cond.not_values:
            raise self.error("condition needs at least one of values or notValues", *where)
        base_key = key.partition("[")[0]
        if base_key in _UNSUPPORTED_KEYS:
            raise self.error(f"unknown attribute: {_UNSUPPORTED_KEYS[base_key]}", *where, "key")
        kind = "string"
        if key.startswith(HEADER_PREFIX) and key.endswith("]"):
            if not key[len(HEADER_PREFIX):-1].strip():
                raise self.error("empty header name in condition key", *where, "key")
        elif key.startswith(CLAIM_PREFIX) and key.endswith("]"):
            parts = key[len(CLAIM_PREFIX):-1].split("][")
            if not all(p.strip() for p in parts) or any("[" in p or "]" in p for p in parts):
                raise self.error(f"invalid claim key '{key}'", *where, "key")
        elif key.startswith(EXPERIMENTAL_PREFIX):
            # Istio's rule: "a[b]" with a non-empty b; the filter is everything before the
            # first "[", the key everything after it up to the final "]" (one path segment).
            open_at = key.find("[")
            if not (key.endswith("]") and 0 < open_at < len(key) - 2):
                raise self.error(f"bad key ({key}): should have format a[b]", *where, "key")
        elif key in SIMPLE_KEYS:
            kind = SIMPLE_KEYS[key]
        else:
            raise self.error(
                f"unknown attribute '{key}' (supported: {', '.join(SUPPORTED_CONDITION_KEYS)})",
                *where, "key",
            )
        return Condition(key, self.values(kind, cond.values, (*where, "values")),
                         self.values(kind, cond.not_values, (*where, "notValues")))

    def rule(self, spec: RuleSpec, namespace: str, policy: str, index: int) -> RuleModel:
        where: Where = ("spec", "rules", index)
        return RuleModel(
            name=rule_name(namespace, policy, index), index=index,
            from_=tuple(self.source(f.source, (*where, "from", i, "source"))
                        for i, f in enumerate(spec.from_)),
            to=tuple(self.operation(t.operation, (*where, "to", i, "operation"))
                     for i, t in enumerate(spec.to)),
            when=tuple(self.condition(c, (*where, "when", i)) for i, c in enumerate(spec.when)),
        )


#: Schema attribute name of every source/operation field alias ("notPrincipals" ->
#: "not_principals"), read from the pydantic models so the tables above stay in Istio's words.
_ATTRS = {field.alias or name: name
          for spec in (SourceSpec, OperationSpec)
          for name, field in spec.model_fields.items()}


def _attr(alias: str) -> str:
    return _ATTRS[alias]


def _bool_annotation(doc: SourceDoc, annotations: Mapping[str, str], key: str,
                     base: Where) -> bool:
    value = annotations.get(key)
    if value is None:
        return False
    if value.strip().lower() not in ("true", "false"):
        raise doc.error(f"annotation '{key}' must be \"true\" or \"false\", got '{value}'",
                        (*base, "metadata", "annotations", key))
    return value.strip().lower() == "true"


def _deny_response(doc: SourceDoc, annotations: Mapping[str, str], action: str,
                   base: Where) -> DenyResponse:
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
           base: Where) -> tuple[tuple[str, str], ...]:
    if spec.target_ref is not None or spec.target_refs is not None:
        which = "targetRef" if spec.target_ref is not None else "targetRefs"
        raise doc.error(f"{which} is not supported (there is no Kubernetes here): use "
                        "selector.matchLabels with the workload labels the Envoy sends",
                        (*base, "spec", which))
    labels = spec.selector.match_labels if spec.selector else {}
    return tuple(sorted(labels.items()))


def policy_model(doc: SourceDoc, resource: ResourceSpec, namespace: str,
                 base: Where = ()) -> PolicyModel:
    """One AuthorizationPolicy resource as the model; raises located ConfigErrors."""
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
    name = resource.metadata.name
    validator = _Validator(doc, base)
    rules = tuple(validator.rule(r, namespace, name, i) for i, r in enumerate(spec.rules or []))
    return PolicyModel(
        namespace=namespace, name=name, action=spec.action, selector=selector, rules=rules,
        dry_run=dry_run, deny_response=_deny_response(doc, annotations, spec.action, base),
        case_insensitive_paths=ci_paths, file=doc.file, line=doc.line_of(base),
    )


def load_models(docs: Iterable[SourceDoc], *, default_namespace: str = "default",
                base_dir: Path | None = None) -> ModelSet:
    """The model of every AuthorizationPolicy and RequestAuthentication in ``docs``.

    Other kinds are skipped (logged); all errors found are raised together. ``base_dir``
    resolves relative ``file://`` jwksUri values (default: the working directory).
    """
    root = base_dir or Path.cwd()
    policies: list[PolicyModel] = []
    authns: list[Authentication] = []
    errors: list[ConfigError] = []
    seen: dict[tuple[str, str, str], str] = {}
    files: list[str] = []
    with paused_gc():
        for doc in docs:
            if doc.file not in files:
                files.append(doc.file)
            for base, data in resources(doc):
                try:
                    model = _resource_model(doc, base, data, default_namespace, seen, root)
                except ConfigErrors as exc:
                    errors.extend(exc.errors)
                    continue
                except ConfigError as exc:
                    errors.append(exc)
                    continue
                if isinstance(model, PolicyModel):
                    policies.append(model)
                elif model is not None:
                    authns.append(model)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return ModelSet(tuple(policies), tuple(authns), tuple(files))


def _resource_model(doc: SourceDoc, base: Where, data: Any, default_namespace: str,
                    seen: dict[tuple[str, str, str], str],
                    root: Path) -> PolicyModel | Authentication | None:
    if not isinstance(data, dict):
        raise doc.error("a document must be a mapping (a Kubernetes resource)", base)
    kind = data.get("kind")
    if kind not in ("AuthorizationPolicy", "RequestAuthentication"):
        log_event(_log, "policy_document_skipped", logging.WARNING, file=doc.file,
                  line=doc.line_of(base), kind=kind)
        return None
    try:
        resource = ResourceSpec.model_validate(data)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc, base) from None
    if resource.api_version not in API_VERSIONS:
        raise doc.error(
            f"unsupported apiVersion '{resource.api_version}' for {kind} (expected "
            f"{' or '.join(API_VERSIONS)})", (*base, "apiVersion"))
    namespace = resource.metadata.namespace or default_namespace
    ident = (kind, namespace, resource.metadata.name)
    if ident in seen:
        raise doc.error(
            f"duplicate {kind} {namespace}/{resource.metadata.name} (first defined at "
            f"{seen[ident]})", (*base, "metadata", "name"))
    seen[ident] = f"{doc.file}:{doc.line_of(base)}"
    if kind == "AuthorizationPolicy":
        return policy_model(doc, resource, namespace, base)
    try:
        spec = RequestAuthenticationSpec.model_validate(resource.spec)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc, (*base, "spec")) from None
    return authentication_model(doc, spec, resource.metadata.name, namespace,
                                _scope(doc, spec, base), base, root)


def load_path_models(path: Path, *, default_namespace: str = "default") -> ModelSet:
    """The model of a file or directory, reading one YAML document at a time.

    Only the model of each document is kept, never every document's values at once (the
    largest part of a load). Unreadable or broken files are reported alone, all together, as
    if nothing had been modelled (a policy error is moot in a file that does not parse).
    """
    path = Path(path)
    files = config_files(path)
    file_errors: list[ConfigError] = []

    def documents() -> Iterator[SourceDoc]:
        for file in files:
            try:
                yield from stream_file(file)
            except ConfigError as exc:
                file_errors.append(exc)

    base_dir = path if path.is_dir() else path.parent
    try:
        models = load_models(documents(), default_namespace=default_namespace,
                             base_dir=base_dir)
    except ConfigError:
        if not file_errors:
            raise
        models = None
    if file_errors:
        raise file_errors[0] if len(file_errors) == 1 else ConfigErrors(file_errors)
    assert models is not None
    return models


def load_model_text(text: str, file: str = "policy.yaml", **kwargs: Any) -> ModelSet:
    """The model of policies given as YAML text (tests, tools)."""
    return load_models(load_documents(text, file), **kwargs)


__all__ = [
    "OPERATION_FIELDS", "SIMPLE_KEYS", "SOURCE_FIELDS", "SUPPORTED_CONDITION_KEYS",
    "load_model_text", "load_models", "load_path_models", "policy_model",
]
