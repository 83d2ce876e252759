"""A directory of Istio files (plus our ratelimit and telemetry files) -> one ``Mesh``.

``load_mesh(path)`` is the whole first arrow of the control plane, and a plain function so the
shared ``Reloader`` can keep the last good mesh serving when an edit is bad:

1. Every ``*.yaml``/``*.yml`` file of the directory is parsed with line numbers
   (``envoy_mixer.common.yamlsrc``). A file holds either Kubernetes-style Istio resources (each
   document has ``apiVersion`` and ``kind``; ``kind: List`` is unwrapped) or one of our own
   configs: envoyproxy/ratelimit's format (documents with ``domain:``) or the telemetry config.
2. Each Istio resource is dispatched on kind and apiVersion to its pydantic schema
   (``controlplane.mesh.schema``); unknown keys fail as ``unknown key``, Istio fields we do not
   implement as ``not supported: <field>``, both with file, line and field.
3. ``build``: the checks a schema cannot make (one field against another: duplicate ports,
   endpoint port names, TLS settings, ...) and the cross-file resolution: short host names,
   gateway references, service endpoints from WorkloadEntries, subsets to endpoints.
4. The security kinds and our own files are loaded by their own loaders
   (``extauthz.policy``, ``controlplane.security.peerauthn``, ``ratelimit.config``,
   ``telemetry.config``), so one bad file anywhere fails the whole load with that loader's
   precise error.

Every error found is reported (``ConfigErrors``), not just the first. Cross-resource findings
that Istio's analyzers report (a route to an unknown host, ...) are not load errors: they are
``controlplane.mesh.analyze``'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controlplane.mesh import model as m
from controlplane.mesh.build import (
    NETWORKING_KINDS,
    Builder,
    Item,
    PathKey,
    Resource,
    schema_errors,
)
from controlplane.mesh.hosts import DEFAULT_DOMAIN
from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.yamlsrc import SourceDoc, config_files, load_documents, resources

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                       "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
#: Security kinds: kept as raw documents, loaded by their own loaders.
SECURITY_KINDS = ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication")
#: Istio kinds a file may hold that this mesh does not implement (a clear error, not "unknown").
UNSUPPORTED_KINDS = ("EnvoyFilter", "WorkloadGroup", "ProxyConfig", "Telemetry", "WasmPlugin")


# ------------------------------------------------------------------------------ errors


def _raise(errors: Sequence[ConfigError]) -> None:
    flat: list[ConfigError] = []
    for e in errors:
        flat.extend(e.errors if isinstance(e, ConfigErrors) else [e])
    # Files are read in name order; within a file, errors are reported top to bottom.
    flat.sort(key=lambda e: (e.file or "", e.line or 0))
    if flat:
        raise flat[0] if len(flat) == 1 else ConfigErrors(flat)


# ------------------------------------------------------------------------------ reading


@dataclass(slots=True)
class _Files:
    """What the directory holds, sorted by kind of content."""

    names: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    security_docs: list[SourceDoc] = field(default_factory=list)
    ratelimit: list[tuple[str, str, list[SourceDoc]]] = field(default_factory=list)
    telemetry: list[tuple[Path, list[SourceDoc]]] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)


def _is_resource(data: Any) -> bool:
    return isinstance(data, dict) and ("apiVersion" in data or "kind" in data)


def _read(path: Path) -> _Files:
    out = _Files()
    for file in config_files(path):
        name = file.name
        out.names.append(name)
        try:
            text = file.read_text(encoding="utf-8")
            docs = load_documents(text, name)
        except OSError as exc:
            out.errors.append(ConfigError(f"cannot read file: {exc.strerror or exc}", file=name))
            continue
        except UnicodeDecodeError:
            out.errors.append(ConfigError("file is not valid UTF-8", file=name))
            continue
        except ConfigError as exc:
            out.errors.append(exc)
            continue
        if not docs:
            continue
        resources = [d for d in docs if _is_resource(d.data)]
        if resources and len(resources) != len(docs):
            odd = next(d for d in docs if not _is_resource(d.data))
            out.errors.append(odd.error(
                "a file holds either Istio resources (apiVersion, kind) or one ratelimit or "
                "telemetry config, not both"))
            continue
        if not resources:
            if all(isinstance(d.data, dict) and "domain" in d.data for d in docs):
                out.ratelimit.append((name, text, docs))
            else:
                out.telemetry.append((file, docs))
            continue
        _collect(docs, out)
    return out


def _collect(docs: Iterable[SourceDoc], out: _Files) -> None:
    for doc in docs:
        security = False
        for base, data in resources(doc):
            if not isinstance(data, dict):
                out.errors.append(doc.error("a document must be a mapping (an Istio resource)",
                                            base))
                continue
            try:
                resource = Resource.model_validate(data)
            except ValidationError as exc:
                out.errors.extend(schema_errors(doc, exc, base))
                continue
            kind, version = resource.kind, resource.api_version
            versions: tuple[str, ...]
            if kind in NETWORKING_KINDS:
                versions = NETWORKING_VERSIONS
            elif kind in SECURITY_KINDS:
                versions = SECURITY_VERSIONS
                security = True
            elif kind in UNSUPPORTED_KINDS:
                out.errors.append(doc.error(f"not supported: kind {kind}", (*base, "kind")))
                continue
            else:
                out.errors.append(doc.error(
                    f"unknown kind '{kind}' (expected one of "
                    f"{', '.join([*NETWORKING_KINDS, *SECURITY_KINDS])})", (*base, "kind")))
                continue
            if version not in versions:
                out.errors.append(doc.error(
                    f"unsupported apiVersion '{version}' for {kind} (expected "
                    f"{' or '.join(versions)})", (*base, "apiVersion")))
                continue
            namespace = resource.metadata.namespace or "default"
            out.items.append(Item(doc, base, resource, namespace))
        if security:
            out.security_docs.append(doc)


# ------------------------------------------------------------------------------ other loaders


def _authz(files: _Files, root: Path) -> Any:
    from extauthz.policy import compile_documents

    docs = [d for d in files.security_docs
            if any(isinstance(x, dict) and x.get("kind") in ("AuthorizationPolicy",
                                                              "RequestAuthentication")
                   for _, x in resources(d))]
    return compile_documents(docs, base_dir=root)


def _peer_authentications(files: _Files) -> Any:
    from controlplane.security.peerauthn import compile_documents

    # It skips the other kinds itself (quietly), so every security document can go in.
    return compile_documents(files.security_docs)


def _ratelimit(files: _Files) -> Any:
    if not files.ratelimit:
        return None
    from ratelimit.config import load_texts

    return load_texts([(name, text) for name, text, _ in files.ratelimit])


def _telemetry(files: _Files) -> Any:
    if not files.telemetry:
        return None
    first, *more = files.telemetry
    if more:
        _, docs = more[0]
        raise docs[0].error(f"a second telemetry config (the first is {first[0].name}): the "
                            "mesh has one")
    from telemetry.config import load_config

    return load_config(first[0])


def _run(errors: list[ConfigError], step: Callable[[], Any]) -> Any:
    try:
        return step()
    except ConfigError as exc:
        errors.append(exc)
        return None


# ------------------------------------------------------------------------------ entry point


def load_mesh(path: Path, *, domain: str = DEFAULT_DOMAIN) -> m.Mesh:
    """Load, validate and resolve the mesh files at ``path`` (a directory, or one file).

    Raises ConfigError (ConfigErrors when there are several), each naming file, line and
    field; nothing is returned unless every file is valid. ``domain`` is the cluster domain
    that short host names are qualified with.
    """
    path = Path(path)
    files = _read(path)
    builder = Builder(domain)
    errors = files.errors
    seen: dict[tuple[str, str, str], str] = {}
    by_kind: dict[str, list[tuple[Item, Any]]] = {k: [] for k in NETWORKING_KINDS}
    documents: list[m.RawDocument] = []
    for item in files.items:
        meta, kind = item.resource.metadata, item.resource.kind
        if kind in SECURITY_KINDS:
            # Their own loaders report duplicates (and everything else about them).
            documents.append(_raw(item))
            continue
        ident = (kind, item.namespace, meta.name)
        if ident in seen:
            errors.append(item.doc.error(
                f"duplicate {kind} {item.namespace}/{meta.name} (first defined at "
                f"{seen[ident]})", (*item.base, "metadata", "name")))
            continue
        seen[ident] = f"{item.doc.file}:{item.doc.line_of(item.base)}"
        spec = builder.spec(item)
        if spec is not None:
            by_kind[kind].append((item, spec))
    # Workloads first: ServiceEntries select them; then services, which subsets select from.
    workloads = [w for item, spec in by_kind["WorkloadEntry"]
                 if (w := builder.workload_entry(item, spec)) is not None]
    services = [s for item, spec in by_kind["ServiceEntry"]
                for s in builder.service_entry(item, spec, workloads)]
    sidecars = [builder.sidecar(item, spec) for item, spec in by_kind["Sidecar"]]
    gateways = [builder.gateway(item, spec) for item, spec in by_kind["Gateway"]]
    vss = [builder.virtual_service(item, spec) for item, spec in by_kind["VirtualService"]]
    drs = [builder.destination_rule(item, spec, services)
           for item, spec in by_kind["DestinationRule"]]
    errors.extend(builder.errors)
    root = path if path.is_dir() else path.parent
    authz = _run(errors, lambda: _authz(files, root))
    peers = _run(errors, lambda: _peer_authentications(files))
    limits = _run(errors, lambda: _ratelimit(files))
    telemetry = _run(errors, lambda: _telemetry(files))
    for _, _, docs in files.ratelimit:
        documents.extend(_own("ratelimit", d, str(d.data.get("domain", ""))) for d in docs)
    for file, docs in files.telemetry:
        documents.extend(_own("telemetry", d, file.stem) for d in docs)
    _raise(errors)
    return m.Mesh(
        services=tuple(services), workloads=tuple(workloads), sidecars=tuple(sidecars),
        gateways=tuple(gateways), virtual_services=tuple(vss), destination_rules=tuple(drs),
        documents=tuple(documents), authz=authz, peer_authentications=peers or (),
        ratelimit=limits, telemetry=telemetry,
        files=tuple(files.names))


def _raw(item: Item) -> m.RawDocument:
    spec = item.resource.spec
    selector = spec.get("selector") if isinstance(spec, dict) else None
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    return m.RawDocument(
        item.resource.kind, item.doc.file, item.origin, item.doc.data if not item.base
        else _at(item.doc.data, item.base),
        m.frozen_map(labels) if isinstance(labels, dict) else None)


def _at(data: Any, path: PathKey) -> Any:
    for part in path:
        data = data[part]
    return data


def _own(kind: str, doc: SourceDoc, name: str) -> m.RawDocument:
    return m.RawDocument(kind, doc.file, m.Origin(kind, "", name, doc.file, doc.line_of(())),
                         doc.data)
