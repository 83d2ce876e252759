"""Policy unit tests without a proxy: a YAML table of requests and expected verdicts.

Format (``mixer authz test --policy PATH CASES.yaml``)::

    defaults:                    # optional, merged into every case's request
      namespace: foo
      labels: {app: httpbin}
    cases:
      - name: admin is denied
        request: {method: GET, path: /admin, headers: {x-user: bob}}
        expect: deny             # allow | deny | unauthenticated
        policy: foo/deny-admin   # optional: the deciding policy (namespace/name)
        rule: 0                  # optional: the deciding rule index (needs policy)
        status: 403              # optional: the HTTP status Envoy would send

Request keys: method, path (query allowed, stripped for matching), host, headers (a list value
is a header sent on several lines), sourcePrincipal, peerUriSans / peerDnsSans (the peer
certificate's SANs; they replace sourcePrincipal), sourceIp (the connection's remote address),
directSourceIp (the physical peer behind the PROXY protocol; default sourceIp), destinationIp,
destinationPort, sni, jwt (sent as ``Authorization: Bearer``), namespace, labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.yamlsrc import load_file, pydantic_errors
from extauthz.request import AuthzRequest


class RequestSpec(BaseModel):
    """A request described in YAML or on the command line."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str = "GET"
    path: str = "/"
    host: str = ""
    #: A list value is a header sent on several lines.
    headers: dict[str, str | list[str]] = {}
    source_principal: str | None = Field(None, alias="sourcePrincipal")
    peer_uri_sans: list[str] = Field([], alias="peerUriSans")
    peer_dns_sans: list[str] = Field([], alias="peerDnsSans")
    source_ip: str | None = Field(None, alias="sourceIp")
    direct_source_ip: str | None = Field(None, alias="directSourceIp")
    destination_ip: str | None = Field(None, alias="destinationIp")
    destination_port: int | None = Field(None, alias="destinationPort")
    sni: str | None = None
    jwt: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = {}

    def to_request(self) -> AuthzRequest:
        """The domain request (workload identity as context_extensions, like Envoy sends)."""
        headers: dict[str, str | list[str]] = {k.lower(): v for k, v in self.headers.items()}
        if self.jwt:
            headers["authorization"] = f"Bearer {self.jwt}"
        ext = {f"label.{k}": v for k, v in self.labels.items()}
        if self.namespace:
            ext["namespace"] = self.namespace
        return AuthzRequest.build(
            method=self.method, path=self.path, host=self.host, headers=headers,
            source_ip=self.source_ip, source_principal=self.source_principal,
            destination_ip=self.destination_ip, destination_port=self.destination_port,
            sni=self.sni, context_extensions=ext, direct_source_ip=self.direct_source_ip,
            peer_uri_sans=self.peer_uri_sans, peer_dns_sans=self.peer_dns_sans,
        )


class CaseSpec(BaseModel):
    """One row of the table."""

    model_config = ConfigDict(extra="forbid")

    name: str
    request: dict[str, Any] = {}
    expect: Literal["allow", "deny", "unauthenticated"]
    policy: str | None = None
    rule: int | None = None
    status: int | None = None


class CasesFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, Any] = {}
    cases: list[CaseSpec]


@dataclass(frozen=True, slots=True)
class Case:
    """A validated case, ready to run."""

    name: str
    request: RequestSpec
    expect: str
    policy: str | None
    rule: int | None
    status: int | None
    line: int | None


def load_cases(path: Path) -> list[Case]:
    """Read and validate a cases file; raises ConfigError with file/line/field."""
    docs = load_file(path, display_name=str(path))
    if len(docs) != 1:
        raise ConfigError("expected exactly one YAML document", file=str(path))
    doc = docs[0]
    try:
        spec = CasesFile.model_validate(doc.data)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc) from None
    cases = []
    for i, c in enumerate(spec.cases):
        merged = {**spec.defaults, **c.request}
        if "labels" in spec.defaults and "labels" in c.request:
            merged["labels"] = {**spec.defaults["labels"], **c.request["labels"]}
        try:
            request = RequestSpec.model_validate(merged)
        except ValidationError as exc:
            raise pydantic_errors(doc, exc, ("cases", i, "request")) from None
        if c.rule is not None and c.policy is None:
            raise doc.error("'rule' needs 'policy'", ("cases", i, "rule"))
        cases.append(Case(c.name, request, c.expect, c.policy, c.rule, c.status,
                          doc.line_of(("cases", i))))
    return cases
