"""Istio ``PeerAuthentication`` (``security.istio.io/v1`` and ``v1beta1``), read from YAML.

Three steps, each error naming file, line and field (``envoy_mixer.common.yamlsrc``):

1. documents -> pydantic models of Istio's CRD (camelCase keys, unknown keys rejected, Kubernetes
   metadata noise such as ``uid`` tolerated, ``kind: List`` unwrapped, other kinds skipped so
   one directory can hold every Istio resource);
2. Istio's own validation (``pkg/config/validation``): ``portLevelMtls`` only with a
   non-empty selector, never empty, ports 1..65535; no wildcards in the selector;
3. -> :class:`PeerAuthentication`, a frozen value that :mod:`controlplane.security.mtls`
   resolves.

``metadata.creationTimestamp`` is kept when present: Istio lets the oldest policy win when
several apply at the same level, and an exported resource (``kubectl get -o yaml``) carries it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.logs import log_event
from envoy_mixer.common.yamlsrc import (
    SourceDoc,
    load_documents,
    pydantic_errors,
    read_documents,
    resources,
)

__all__ = [
    "API_VERSIONS",
    "KIND",
    "MtlsMode",
    "PeerAuthentication",
    "compile_documents",
    "load_peer_authentications",
    "load_text",
]

_log = logging.getLogger("controlplane.security.peerauthn")

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
KIND = "PeerAuthentication"

#: Istio's ``PeerAuthentication.MutualTLS.Mode``; UNSET inherits from the parent scope.
MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


# --------------------------------------------------------------------------------------------
# 1. Schema (Istio's field names)
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class _Selector(_Strict):
    match_labels: dict[str, str] = Field({}, alias="matchLabels")


class _MutualTls(_Strict):
    mode: MtlsMode = "UNSET"


class _Spec(_Strict):
    selector: _Selector | None = None
    mtls: _MutualTls | None = None
    port_level_mtls: dict[int, _MutualTls] | None = Field(None, alias="portLevelMtls")


class _Metadata(BaseModel):
    """Only name, namespace and creationTimestamp matter; other Kubernetes fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    namespace: str | None = None
    creation_timestamp: datetime | None = Field(None, alias="creationTimestamp")

    @field_validator("name")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("creation_timestamp")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must be an RFC 3339 time with a zone, e.g. 2024-01-02T03:04:05Z")
        return value


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: _Metadata
    spec: dict[str, Any] = {}
    status: Any = None


# --------------------------------------------------------------------------------------------
# 2. Domain value
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """One validated PeerAuthentication. ``selector`` is sorted (label, value) pairs."""

    namespace: str
    name: str
    mode: MtlsMode = "UNSET"
    selector: tuple[tuple[str, str], ...] = ()
    port_modes: tuple[tuple[int, MtlsMode], ...] = ()
    created: datetime | None = None
    file: str | None = None
    line: int | None = None

    @property
    def key(self) -> str:
        """``namespace/name``, as Istio's logs and ``istioctl`` name it."""
        return f"{self.namespace}/{self.name}"

    def selects(self, labels: dict[str, str]) -> bool:
        """True if every selector label is on the workload (an empty selector selects all)."""
        return all(labels.get(k) == v for k, v in self.selector)


# --------------------------------------------------------------------------------------------
# 3. Loading
# --------------------------------------------------------------------------------------------


def _compile(doc: SourceDoc, resource: _Resource, namespace: str,
             base: tuple[str | int, ...]) -> PeerAuthentication:
    try:
        spec = _Spec.model_validate(resource.spec)
    except ValidationError as exc:
        raise pydantic_errors(doc, exc, (*base, "spec")) from None
    labels = spec.selector.match_labels if spec.selector else {}
    for label, value in labels.items():
        where = (*base, "spec", "selector", "matchLabels", label)
        if not label.strip():
            raise doc.error("selector label names must not be empty", where)
        if "*" in label or "*" in value:
            raise doc.error("wildcard is not supported in selector", where)
    ports: list[tuple[int, MtlsMode]] = []
    if spec.port_level_mtls is not None:
        where = (*base, "spec", "portLevelMtls")
        if not labels:
            raise doc.error("mesh/namespace peer authentication cannot have port level mTLS "
                            "(add a selector)", where)
        if not spec.port_level_mtls:
            raise doc.error("port level mTLS, if defined, must have at least one element", where)
        for port, mtls in sorted(spec.port_level_mtls.items()):
            if not 1 <= port <= 65535:
                raise doc.error(f"port must be in range 1..65535, got {port}", (*where, port))
            ports.append((port, mtls.mode))
    return PeerAuthentication(
        namespace=namespace, name=resource.metadata.name,
        mode=spec.mtls.mode if spec.mtls else "UNSET",
        selector=tuple(sorted(labels.items())), port_modes=tuple(ports),
        created=resource.metadata.creation_timestamp, file=doc.file, line=doc.line_of(base),
    )


def compile_documents(docs: Iterable[SourceDoc], *, default_namespace: str = "default",
                      ) -> tuple[PeerAuthentication, ...]:
    """Every PeerAuthentication in ``docs``, in load order; all errors raised together."""
    result: list[PeerAuthentication] = []
    errors: list[ConfigError] = []
    seen: dict[tuple[str, str], str] = {}
    for doc in docs:
        for base, data in resources(doc):
            if not isinstance(data, dict):
                errors.append(doc.error("a document must be a mapping (a Kubernetes resource)",
                                        base))
                continue
            if data.get("kind") != KIND:
                log_event(_log, "peer_authentication_document_skipped", logging.DEBUG,
                          file=doc.file, line=doc.line_of(base), kind=data.get("kind"))
                continue
            try:
                resource = _Resource.model_validate(data)
            except ValidationError as exc:
                errors.append(pydantic_errors(doc, exc, base))
                continue
            if resource.api_version not in API_VERSIONS:
                errors.append(doc.error(
                    f"unsupported apiVersion '{resource.api_version}' for {KIND} (expected "
                    f"{' or '.join(API_VERSIONS)})", (*base, "apiVersion")))
                continue
            namespace = resource.metadata.namespace or default_namespace
            ident = (namespace, resource.metadata.name)
            if ident in seen:
                errors.append(doc.error(
                    f"duplicate {KIND} {namespace}/{resource.metadata.name} (first defined at "
                    f"{seen[ident]})", (*base, "metadata", "name")))
                continue
            seen[ident] = f"{doc.file}:{doc.line_of(base)}"
            try:
                result.append(_compile(doc, resource, namespace, base))
            except ConfigErrors as exc:
                errors.extend(exc.errors)
            except ConfigError as exc:
                errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return tuple(result)


def load_peer_authentications(path: Path, *, default_namespace: str = "default",
                              ) -> tuple[PeerAuthentication, ...]:
    """Load a YAML file or a directory of them (by file name); raises ConfigError."""
    return compile_documents(read_documents(Path(path)), default_namespace=default_namespace)


def load_text(text: str, file: str = "peerauthn.yaml", *,
              default_namespace: str = "default") -> tuple[PeerAuthentication, ...]:
    """PeerAuthentications from YAML text (tests, inline use)."""
    return compile_documents(load_documents(text, file), default_namespace=default_namespace)
