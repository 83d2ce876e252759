"""Istio's ``AuthorizationPolicy`` / ``RequestAuthentication`` CRDs as strict pydantic models.

Field names and aliases are Istio's (camelCase), for ``security.istio.io/v1`` and ``v1beta1``
alike; unknown keys are rejected, Kubernetes metadata noise (``uid``, ``managedFields``, a
``status``) is tolerated. This is the wire format only: ``extauthz.loader`` turns it into the
neutral model of ``extauthz.model``. The opt-in extensions are annotations (Istio ignores
unknown annotations, so the files stay valid Istio):

- ``authz.envoy-mixer.io/deny-status`` / ``deny-body`` / ``deny-headers``: custom deny response
  of a DENY policy;
- ``authz.envoy-mixer.io/case-insensitive-paths: "true"``: match this policy's paths ignoring
  case (e.g. a DENY on ``/admin`` that must also catch ``/ADMIN``).

List defaults are factories: pydantic deep-copies a literal ``[]`` default for every model
built, which was the largest single cost of loading 10,000 rules.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

API_GROUP = "security.istio.io"
API_VERSIONS = (f"{API_GROUP}/v1", f"{API_GROUP}/v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"
EXT = "authz.envoy-mixer.io/"
DENY_STATUS_ANNOTATION = EXT + "deny-status"
DENY_BODY_ANNOTATION = EXT + "deny-body"
DENY_HEADERS_ANNOTATION = EXT + "deny-headers"
CASE_INSENSITIVE_PATHS_ANNOTATION = EXT + "case-insensitive-paths"

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


StrList = list[str]


class SourceSpec(_Strict):
    """``rules[].from[].source``."""

    principals: StrList = Field(default_factory=list)
    not_principals: StrList = Field(default_factory=list, alias="notPrincipals")
    request_principals: StrList = Field(default_factory=list, alias="requestPrincipals")
    not_request_principals: StrList = Field(default_factory=list, alias="notRequestPrincipals")
    namespaces: StrList = Field(default_factory=list)
    not_namespaces: StrList = Field(default_factory=list, alias="notNamespaces")
    service_accounts: StrList = Field(default_factory=list, alias="serviceAccounts")
    not_service_accounts: StrList = Field(default_factory=list, alias="notServiceAccounts")
    ip_blocks: StrList = Field(default_factory=list, alias="ipBlocks")
    not_ip_blocks: StrList = Field(default_factory=list, alias="notIpBlocks")
    remote_ip_blocks: StrList = Field(default_factory=list, alias="remoteIpBlocks")
    not_remote_ip_blocks: StrList = Field(default_factory=list, alias="notRemoteIpBlocks")
    trust_domains: StrList = Field(default_factory=list, alias="trustDomains")
    not_trust_domains: StrList = Field(default_factory=list, alias="notTrustDomains")


class OperationSpec(_Strict):
    """``rules[].to[].operation``."""

    hosts: StrList = Field(default_factory=list)
    not_hosts: StrList = Field(default_factory=list, alias="notHosts")
    ports: list[str | int] = Field(default_factory=list)
    not_ports: list[str | int] = Field(default_factory=list, alias="notPorts")
    methods: StrList = Field(default_factory=list)
    not_methods: StrList = Field(default_factory=list, alias="notMethods")
    paths: StrList = Field(default_factory=list)
    not_paths: StrList = Field(default_factory=list, alias="notPaths")


class FromSpec(_Strict):
    """One ``from`` entry."""

    source: SourceSpec = Field(default_factory=SourceSpec)


class ToSpec(_Strict):
    """One ``to`` entry."""

    operation: OperationSpec = Field(default_factory=OperationSpec)


class ConditionSpec(_Strict):
    """One ``when`` condition."""

    key: str
    values: list[str | int] = Field(default_factory=list)
    not_values: list[str | int] = Field(default_factory=list, alias="notValues")


class RuleSpec(_Strict):
    """One rule: from AND to AND when."""

    from_: list[FromSpec] = Field(default_factory=list, alias="from")
    to: list[ToSpec] = Field(default_factory=list)
    when: list[ConditionSpec] = Field(default_factory=list)


class SelectorSpec(_Strict):
    """``spec.selector``."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


class ProviderSpec(_Strict):
    """``spec.provider`` (CUSTOM only)."""

    name: str = ""


class AuthorizationPolicySpec(_Strict):
    """``AuthorizationPolicy.spec``."""

    selector: SelectorSpec | None = None
    target_ref: dict[str, Any] | None = Field(None, alias="targetRef")
    target_refs: list[dict[str, Any]] | None = Field(None, alias="targetRefs")
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: ProviderSpec | None = None
    rules: list[RuleSpec] | None = None


class HeaderLocationSpec(_Strict):
    """``jwtRules[].fromHeaders[]``."""

    name: str
    prefix: str = ""


class ClaimToHeaderSpec(_Strict):
    """``jwtRules[].outputClaimToHeaders[]``."""

    header: str
    claim: str


class JwtRuleSpec(_Strict):
    """``RequestAuthentication.spec.jwtRules[]``."""

    issuer: str
    audiences: StrList = Field(default_factory=list)
    jwks_uri: str | None = Field(None, alias="jwksUri")
    jwks: str | None = None
    from_headers: list[HeaderLocationSpec] = Field(default_factory=list, alias="fromHeaders")
    from_params: StrList = Field(default_factory=list, alias="fromParams")
    from_cookies: StrList = Field(default_factory=list, alias="fromCookies")
    output_payload_to_header: str | None = Field(None, alias="outputPayloadToHeader")
    forward_original_token: bool = Field(False, alias="forwardOriginalToken")
    output_claim_to_headers: list[ClaimToHeaderSpec] = Field(default_factory=list,
                                                             alias="outputClaimToHeaders")
    timeout: str | None = None
    space_delimited_claims: StrList = Field(default_factory=list, alias="spaceDelimitedClaims")


class RequestAuthenticationSpec(_Strict):
    """``RequestAuthentication.spec``."""

    selector: SelectorSpec | None = None
    target_ref: dict[str, Any] | None = Field(None, alias="targetRef")
    target_refs: list[dict[str, Any]] | None = Field(None, alias="targetRefs")
    jwt_rules: list[JwtRuleSpec] = Field(default_factory=list, alias="jwtRules")


class MetadataSpec(BaseModel):
    """Kubernetes metadata: only name, namespace and annotations matter; the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class ResourceSpec(BaseModel):
    """A whole resource; ``status`` and other server-side fields are tolerated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: MetadataSpec
    spec: dict[str, Any] = Field(default_factory=dict)
    status: Any = None


__all__ = [
    "API_VERSIONS", "CASE_INSENSITIVE_PATHS_ANNOTATION", "DENY_BODY_ANNOTATION",
    "DENY_HEADERS_ANNOTATION", "DENY_STATUS_ANNOTATION", "DRY_RUN_ANNOTATION",
    "AuthorizationPolicySpec", "ConditionSpec", "OperationSpec", "RequestAuthenticationSpec",
    "ResourceSpec", "RuleSpec", "SourceSpec",
]
