"""A directory of Istio files (plus our ratelimit and telemetry files) -> one ``Mesh``.

``load_mesh(path)`` is the whole first arrow of the control plane, and a plain function so the
shared ``Reloader`` can keep the last good mesh serving when an edit is bad:

1. Every ``*.yaml``/``*.yml`` file of the directory is parsed with line numbers
   (``envoy_mixer.yamlsrc``). A file holds either Kubernetes-style Istio resources (each
   document has ``apiVersion`` and ``kind``; ``kind: List`` is unwrapped) or one of our own
   configs: envoyproxy/ratelimit's format (documents with ``domain:``) or the telemetry config.
2. Each Istio resource is dispatched on kind and apiVersion to its pydantic schema
   (``controlplane.mesh.schema``); unknown keys fail as ``unknown key``, Istio fields we do not
   implement as ``not supported: <field>``, both with file, line and field.
3. Checks a schema cannot make (one resource's fields against each other: duplicate ports,
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

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlplane.mesh import model as m
from controlplane.mesh.convert import to_model
from controlplane.mesh.hosts import (
    DEFAULT_DOMAIN,
    host_matches,
    resolve_gateway,
    resolve_short_name,
    split_scoped,
)
from controlplane.mesh.schema import destinationrule as dr_schema
from controlplane.mesh.schema import gateway as gw_schema
from controlplane.mesh.schema import serviceentry as se_schema
from controlplane.mesh.schema import sidecar as sc_schema
from controlplane.mesh.schema import virtualservice as vs_schema
from controlplane.mesh.schema.common import NOT_SUPPORTED
from envoy_mixer.errors import ConfigError, ConfigErrors
from envoy_mixer.yamlsrc import SourceDoc, config_files, load_documents

PathKey = tuple[str | int, ...]

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                       "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

#: The schema of every networking kind the mesh models.
NETWORKING_KINDS: Mapping[str, type[BaseModel]] = {
    "ServiceEntry": se_schema.ServiceEntrySpec,
    "WorkloadEntry": se_schema.WorkloadEntrySpec,
    "Sidecar": sc_schema.SidecarSpec,
    "Gateway": gw_schema.GatewaySpec,
    "VirtualService": vs_schema.VirtualServiceSpec,
    "DestinationRule": dr_schema.DestinationRuleSpec,
}
#: Security kinds: kept as raw documents, loaded by their own loaders.
SECURITY_KINDS = ("AuthorizationPolicy", "RequestAuthentication", "PeerAuthentication")
#: Istio kinds a file may hold that this mesh does not implement (a clear error, not "unknown").
UNSUPPORTED_KINDS = ("EnvoyFilter", "WorkloadGroup", "ProxyConfig", "Telemetry", "WasmPlugin",
                     "ServiceEntryStatus")


class _Metadata(BaseModel):
    """Kubernetes metadata: name, namespace, labels, annotations; server-side noise ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    namespace: str | None = Field(None, min_length=1)
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class _Resource(BaseModel):
    """The envelope of every Istio resource (``status`` is tolerated, as kubectl writes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: _Metadata
    spec: dict[str, Any] = {}
    status: Any = None


# ------------------------------------------------------------------------------ errors


def schema_errors(doc: SourceDoc, exc: ValidationError, base: PathKey) -> list[ConfigError]:
    """Each pydantic error as a ConfigError naming file, line and field.

    Our wording: ``unknown key 'x'`` (at the key's line), ``not supported: x`` for Istio
    fields we do not implement, ``missing required key 'x'``, and pydantic's message without
    its ``Value error, `` prefix otherwise.
    """
    errors = []
    for err in exc.errors():
        loc = (*base, *(p for p in err["loc"] if isinstance(p, (str, int))))
        kind = err.get("type", "")
        last = loc[-1] if loc else ""
        if kind == "extra_forbidden":
            errors.append(doc.error(f"unknown key '{last}'", loc, at_key=True))
        elif kind == NOT_SUPPORTED:
            errors.append(doc.error(f"not supported: {last}", loc, at_key=True))
        elif kind == "missing":
            errors.append(doc.error(f"missing required key '{last}'", loc))
        else:
            errors.append(doc.error(str(err["msg"]).removeprefix("Value error, "), loc))
    return errors


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
class _Item:
    """One Istio resource found in a file, envelope validated."""

    doc: SourceDoc
    base: PathKey
    resource: _Resource
    namespace: str

    @property
    def origin(self) -> m.Origin:
        return m.Origin(self.resource.kind, self.namespace, self.resource.metadata.name,
                        self.doc.file, self.doc.line_of(self.base))

    def line(self, *path: str | int) -> int | None:
        return self.doc.line_of((*self.base, "spec", *path))

    def error(self, message: str, *path: str | int, at_key: bool = False) -> ConfigError:
        return self.doc.error(message, (*self.base, "spec", *path), at_key=at_key)


@dataclass(slots=True)
class _Files:
    """What the directory holds, sorted by kind of content."""

    names: list[str] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    security_docs: list[SourceDoc] = field(default_factory=list)
    ratelimit: list[tuple[str, str, list[SourceDoc]]] = field(default_factory=list)
    telemetry: list[tuple[Path, list[SourceDoc]]] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)


def _is_resource(data: Any) -> bool:
    return isinstance(data, dict) and ("apiVersion" in data or "kind" in data)


def _resources(doc: SourceDoc) -> Iterator[tuple[PathKey, Any]]:
    data = doc.data
    if (isinstance(data, dict) and data.get("kind") == "List"
            and isinstance(data.get("items"), list)):
        for i, item in enumerate(data["items"]):
            yield ("items", i), item
    else:
        yield (), data


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
        for base, data in _resources(doc):
            if not isinstance(data, dict):
                out.errors.append(doc.error("a document must be a mapping (an Istio resource)",
                                            base))
                continue
            try:
                resource = _Resource.model_validate(data)
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
            out.items.append(_Item(doc, base, resource, namespace))
        if security:
            out.security_docs.append(doc)


# ------------------------------------------------------------------------------ building


class _Builder:
    """Turns validated specs into model objects, collecting every error."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.errors: list[ConfigError] = []
        self.specs: list[tuple[_Item, BaseModel]] = []

    def spec(self, item: _Item) -> BaseModel | None:
        schema = NETWORKING_KINDS[item.resource.kind]
        try:
            return schema.model_validate(item.resource.spec)
        except ValidationError as exc:
            self.errors.extend(schema_errors(item.doc, exc, (*item.base, "spec")))
            return None

    def fqdn(self, host: str, item: _Item) -> str:
        return resolve_short_name(host, item.namespace, self.domain)

    # -- ServiceEntry / WorkloadEntry

    def ports(self, item: _Item, ports: Sequence[se_schema.ServicePort]) -> tuple[m.Port, ...]:
        numbers: set[int] = set()
        names: set[str] = set()
        out = []
        for i, p in enumerate(ports):
            if p.number in numbers:
                self.errors.append(item.error(f"duplicate port number {p.number}",
                                              "ports", i, "number"))
            if p.name in names:
                self.errors.append(item.error(f"duplicate port name '{p.name}'",
                                              "ports", i, "name"))
            numbers.add(p.number)
            names.add(p.name)
            out.append(m.Port(p.number, p.name, p.protocol, p.target_port, item.line("ports", i)))
        return tuple(out)

    def inline_endpoints(self, item: _Item, spec: se_schema.ServiceEntrySpec,
                         ports: tuple[m.Port, ...]) -> tuple[m.Endpoint, ...]:
        names = {p.name for p in ports}
        out = []
        for i, e in enumerate(spec.endpoints):
            if not e.address:
                self.errors.append(item.error("missing required key 'address'",
                                              "endpoints", i, "address"))
                continue
            if spec.resolution == "STATIC" and not _ip_or_unix(e.address):
                self.errors.append(item.error(
                    f"address '{e.address}' must be an IP address (or unix://) with resolution "
                    "STATIC", "endpoints", i, "address"))
            for port_name in e.ports:
                if port_name not in names:
                    self.errors.append(item.error(
                        f"endpoint port '{port_name}' is not a port of this ServiceEntry "
                        f"(ports: {', '.join(sorted(names)) or 'none'})",
                        "endpoints", i, "ports", port_name, at_key=True))
            out.append(m.Endpoint(e.address, m.frozen_map(e.ports), m.frozen_map(e.labels),
                                  e.service_account, e.weight))
        return tuple(out)

    def service_entry(self, item: _Item, spec: se_schema.ServiceEntrySpec,
                      workloads: Sequence[m.Workload]) -> list[m.Service]:
        ports = self.ports(item, spec.ports)
        if spec.endpoints and spec.workload_selector is not None:
            self.errors.append(item.error("set only one of endpoints and workloadSelector",
                                          "workloadSelector", at_key=True))
        for i, host in enumerate(spec.hosts):
            if host == "*" or not host:
                self.errors.append(item.error(f"invalid host '{host}' (a ServiceEntry host "
                                              "must be a name or *.suffix)", "hosts", i))
            elif (host.startswith("*") and spec.resolution in ("DNS", "DNS_ROUND_ROBIN")
                  and not spec.endpoints):
                self.errors.append(item.error(
                    f"wildcard host '{host}' needs endpoints with resolution "
                    f"{spec.resolution} (there is no name to resolve)", "hosts", i))
        for i, address in enumerate(spec.addresses):
            if not _ip_or_cidr(address):
                self.errors.append(item.error(f"invalid address '{address}' (expected an IP "
                                              "or CIDR)", "addresses", i))
        selector = spec.workload_selector.labels if spec.workload_selector else None
        if selector is not None:
            endpoints = tuple(
                m.Endpoint(w.address, w.ports, w.labels, w.service_account, w.weight, w.key)
                for w in workloads
                if w.namespace == item.namespace and m.labels_match(selector, w.labels)
            )
        else:
            endpoints = self.inline_endpoints(item, spec, ports)
        origin = item.origin
        return [
            m.Service(
                host=host, namespace=item.namespace, ports=ports, location=spec.location,
                resolution=spec.resolution, endpoints=endpoints, origin=origin,
                addresses=tuple(spec.addresses),
                selector=m.frozen_map(selector) if selector is not None else None,
                subject_alt_names=tuple(spec.subject_alt_names))
            for host in spec.hosts
        ]

    def workload_entry(self, item: _Item, spec: se_schema.WorkloadEntrySpec) -> m.Workload | None:
        if not spec.address:
            self.errors.append(item.error("missing required key 'address'", "address"))
            return None
        meta = item.resource.metadata
        # Istio merges the resource's own labels under the spec's (spec labels win).
        labels = {**meta.labels, **spec.labels}
        return m.Workload(meta.name, item.namespace, spec.address, m.frozen_map(labels),
                          spec.service_account, m.frozen_map(spec.ports), item.origin,
                          spec.weight)

    # -- Sidecar

    def sidecar(self, item: _Item, spec: sc_schema.SidecarSpec) -> m.Sidecar:
        ingress = []
        for i, ing in enumerate(spec.ingress):
            self.capture(item, ing.capture_mode, "ingress", i)
            self.bind(item, ing.bind, "ingress", i)
            if not ing.default_endpoint:
                self.errors.append(item.error(
                    "missing required key 'defaultEndpoint' (without traffic capture it is "
                    "where the app listens)", "ingress", i, "defaultEndpoint"))
            elif not _endpoint_ok(ing.default_endpoint):
                self.errors.append(item.error(
                    f"invalid defaultEndpoint '{ing.default_endpoint}' (expected "
                    "127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT or unix:///path)",
                    "ingress", i, "defaultEndpoint"))
            ingress.append(m.IngressListener(
                _port(ing.port, item.line("ingress", i, "port")), ing.bind, ing.capture_mode,
                ing.default_endpoint, item.line("ingress", i)))
        egress = []
        for i, eg in enumerate(spec.egress):
            self.capture(item, eg.capture_mode, "egress", i)
            self.bind(item, eg.bind, "egress", i)
            hosts = []
            for j, host in enumerate(eg.hosts):
                scoped = split_scoped(host)
                if scoped is None or not scoped[0] or not scoped[1]:
                    self.errors.append(item.error(
                        f"host '{host}' must be namespace/host (namespace may be *, . or ~)",
                        "egress", i, "hosts", j))
                    continue
                hosts.append(m.ScopedHost(*scoped))
            port = _port(eg.port, item.line("egress", i, "port")) if eg.port else None
            egress.append(m.EgressListener(port, eg.bind, eg.capture_mode, tuple(hosts),
                                           item.line("egress", i)))
        selector = spec.workload_selector.labels if spec.workload_selector else None
        policy = spec.outbound_traffic_policy.mode if spec.outbound_traffic_policy else "ALLOW_ANY"
        return m.Sidecar(item.origin, m.frozen_map(selector) if selector is not None else None,
                         tuple(ingress), tuple(egress), policy)

    def capture(self, item: _Item, mode: str, *path: str | int) -> None:
        if mode == "IPTABLES":
            self.errors.append(item.error(
                "not supported: captureMode IPTABLES (this mesh has no traffic capture; use "
                "NONE with bind and port)", *path, "captureMode"))

    def bind(self, item: _Item, bind: str, *path: str | int) -> None:
        if bind and not _ip_or_unix(bind):
            self.errors.append(item.error(f"invalid bind '{bind}' (expected an IP address or "
                                          "unix:///path)", *path, "bind"))

    # -- Gateway

    def gateway(self, item: _Item, spec: gw_schema.GatewaySpec) -> m.Gateway:
        servers = []
        for i, s in enumerate(spec.servers):
            self.bind(item, s.bind, "servers", i)
            hosts = []
            for j, host in enumerate(s.hosts):
                # A Gateway host without a namespace is visible to every namespace.
                namespace, host_name = split_scoped(host) or ("*", host)
                if not namespace or not host_name:
                    self.errors.append(item.error(f"invalid host '{host}'", "servers", i,
                                                  "hosts", j))
                    continue
                hosts.append(m.ScopedHost(namespace, host_name))
            tls = None
            if s.tls is not None:
                tls = to_model(m.ServerTLS, s.tls)
                files = tls.server_certificate and tls.private_key
                if tls.mode in ("SIMPLE", "MUTUAL") and not files and not tls.https_redirect:
                    self.errors.append(item.error(
                        f"tls mode {tls.mode} needs serverCertificate and privateKey",
                        "servers", i, "tls"))
                if tls.mode == "MUTUAL" and not tls.ca_certificates:
                    self.errors.append(item.error("tls mode MUTUAL needs caCertificates",
                                                  "servers", i, "tls"))
            elif s.port.protocol in ("HTTPS", "TLS"):
                self.errors.append(item.error(
                    f"a {s.port.protocol} server needs tls settings", "servers", i))
            servers.append(m.Server(_port(s.port, item.line("servers", i, "port")),
                                    tuple(hosts), s.bind, tls, s.name, item.line("servers", i)))
        return m.Gateway(item.origin, m.frozen_map(spec.selector), tuple(servers))

    # -- VirtualService

    def virtual_service(self, item: _Item, spec: vs_schema.VirtualServiceSpec) -> m.VirtualService:
        gateways = tuple(resolve_gateway(g, item.namespace) for g in spec.gateways) or (
            m.MESH_GATEWAY,)
        hosts = tuple(self.fqdn(h, item) for h in spec.hosts)
        for i, host in enumerate(spec.hosts):
            if host == "*" and m.MESH_GATEWAY in gateways:
                self.errors.append(item.error(
                    "host '*' is not allowed for a VirtualService bound to the mesh gateway",
                    "hosts", i))
        routes = []
        for i, r in enumerate(spec.http):
            where: PathKey = ("http", i)
            matches = tuple(self.match(item, x, (*where, "match", j))
                            for j, x in enumerate(r.match))
            route = tuple(
                m.WeightedDestination(
                    self.destination(item, d.destination, (*where, "route", k, "destination")),
                    d.weight, _headers(d.headers))
                for k, d in enumerate(r.route))
            if len(r.route) > 1 and not any(d.weight for d in r.route):
                # Istio splits by weight/(sum of weights); all zero leaves nothing to split.
                self.errors.append(item.error(
                    "several destinations need weights (a destination gets weight/sum of "
                    "the weights)", *where, "route"))
            if r.rewrite is not None and r.rewrite.uri_regex_rewrite is not None:
                self.regex(item, r.rewrite.uri_regex_rewrite.match,
                           (*where, "rewrite", "uriRegexRewrite", "match"))
            routes.append(m.HttpRoute(
                match=matches, route=route, name=r.name,
                redirect=to_model(m.Redirect, r.redirect) if r.redirect else None,
                rewrite=to_model(m.Rewrite, r.rewrite) if r.rewrite else None,
                timeout=r.timeout,
                retries=to_model(m.Retry, r.retries) if r.retries else None,
                fault=_fault(r.fault), headers=_headers(r.headers), line=item.line(*where)))
        return m.VirtualService(item.origin, hosts, gateways, tuple(routes))

    def destination(self, item: _Item, d: vs_schema.Destination, where: PathKey
                    ) -> m.Destination:
        return m.Destination(self.fqdn(d.host, item), d.subset,
                             d.port.number if d.port else None, d.host, item.line(*where))

    def match(self, item: _Item, x: vs_schema.HTTPMatchRequest, where: PathKey) -> m.HttpMatch:
        def sm(value: vs_schema.StringMatch | None, *path: str) -> m.StringMatch | None:
            if value is None:
                return None
            if value.exact is not None:
                return m.StringMatch("exact", value.exact)
            if value.prefix is not None:
                return m.StringMatch("prefix", value.prefix)
            assert value.regex is not None  # the schema guarantees exactly one
            self.regex(item, value.regex, (*where, *path, "regex"))
            return m.StringMatch("regex", value.regex)

        def table(values: Mapping[str, vs_schema.StringMatch], key: str
                  ) -> tuple[tuple[str, m.StringMatch], ...]:
            out = []
            for name, value in values.items():
                converted = sm(value, key, name)
                assert converted is not None
                out.append((name, converted))
            return tuple(out)

        return m.HttpMatch(x.name, sm(x.uri, "uri"), sm(x.method, "method"),
                           table(x.headers, "headers"), table(x.query_params, "queryParams"),
                           x.port)

    def regex(self, item: _Item, pattern: str, where: PathKey) -> None:
        # Envoy uses RE2. Python's re accepts every RE2 construct a route needs, so a pattern
        # that fails here would fail in Envoy too; the constructs re has and RE2 lacks
        # (lookaround, backreferences) are rejected by name.
        try:
            re.compile(pattern)
        except re.error as exc:
            self.errors.append(item.error(f"invalid regex '{pattern}': {exc}", *where))
            return
        if _RE2_UNSUPPORTED.search(pattern):
            self.errors.append(item.error(
                f"invalid regex '{pattern}': RE2 (Envoy's regex engine) has no lookaround or "
                "backreferences", *where))

    # -- DestinationRule

    def destination_rule(self, item: _Item, spec: dr_schema.DestinationRuleSpec,
                         services: Sequence[m.Service]) -> m.DestinationRule:
        host = self.fqdn(spec.host, item)
        endpoints = [e for s in services if host_matches(host, s.host) for e in s.endpoints]
        subsets = []
        seen: set[str] = set()
        for i, s in enumerate(spec.subsets):
            if s.name in seen:
                self.errors.append(item.error(f"duplicate subset name '{s.name}'",
                                              "subsets", i, "name"))
            seen.add(s.name)
            subsets.append(m.Subset(
                s.name, m.frozen_map(s.labels),
                tuple(e for e in endpoints if m.labels_match(s.labels, e.labels)),
                to_model(m.TrafficPolicy, s.traffic_policy) if s.traffic_policy else None,
                item.line("subsets", i)))
        policy = to_model(m.TrafficPolicy, spec.traffic_policy) if spec.traffic_policy else None
        return m.DestinationRule(item.origin, host, tuple(subsets), policy)


def _port(p: sc_schema.SidecarPort | gw_schema.GatewayPort, line: int | None) -> m.Port:
    return m.Port(p.number, p.name, p.protocol, None, line)


def _headers(h: vs_schema.Headers | None) -> m.Headers | None:
    if h is None:
        return None

    def ops(o: vs_schema.HeaderOperations | None) -> m.HeaderOperations:
        if o is None:
            return m.HeaderOperations()
        return m.HeaderOperations(tuple(o.set.items()), tuple(o.add.items()), tuple(o.remove))

    return m.Headers(ops(h.request), ops(h.response))


def _fault(f: vs_schema.HTTPFaultInjection | None) -> m.Fault | None:
    if f is None:
        return None
    delay = abort = None
    if f.delay is not None:
        delay = m.Delay(f.delay.fixed_delay,
                        f.delay.percentage.value if f.delay.percentage else None)
    if f.abort is not None:
        abort = m.Abort(f.abort.http_status, f.abort.grpc_status,
                        f.abort.percentage.value if f.abort.percentage else None)
    return m.Fault(delay, abort)


def _ip_or_unix(text: str) -> bool:
    if text.startswith("unix://"):
        return len(text) > len("unix://")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ip_or_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")

_ENDPOINT = re.compile(r"^(127\.0\.0\.1|0\.0\.0\.0|\[::1\]|\[::\]):(\d{1,5})$")


def _endpoint_ok(text: str) -> bool:
    if text.startswith("unix://"):
        return len(text) > len("unix://")
    match = _ENDPOINT.match(text)
    return match is not None and 1 <= int(match.group(2)) <= 65535


# ------------------------------------------------------------------------------ other loaders


def _authz(files: _Files, root: Path) -> Any:
    from extauthz.policy import compile_documents

    docs = [d for d in files.security_docs
            if any(isinstance(x, dict) and x.get("kind") in ("AuthorizationPolicy",
                                                              "RequestAuthentication")
                   for _, x in _resources(d))]
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
    builder = _Builder(domain)
    errors = files.errors
    seen: dict[tuple[str, str, str], str] = {}
    by_kind: dict[str, list[tuple[_Item, Any]]] = {k: [] for k in NETWORKING_KINDS}
    documents: list[m.RawDocument] = []
    for item in files.items:
        meta, kind = item.resource.metadata, item.resource.kind
        ident = (kind, item.namespace, meta.name)
        if ident in seen:
            errors.append(item.doc.error(
                f"duplicate {kind} {item.namespace}/{meta.name} (first defined at "
                f"{seen[ident]})", (*item.base, "metadata", "name")))
            continue
        seen[ident] = f"{item.doc.file}:{item.doc.line_of(item.base)}"
        if kind in SECURITY_KINDS:
            documents.append(_raw(item))
            continue
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


def _raw(item: _Item) -> m.RawDocument:
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
