"""Validated Istio specs -> mesh model objects: the per-kind checks and the resolution.

``loader`` reads the files and hands each resource here as an ``Item`` (its document, path,
envelope and namespace). ``Builder`` validates the spec against its schema, makes the checks a
schema cannot (one field against another: duplicate ports, endpoint port names, TLS files,
regexes), resolves names (short hosts, gateway references, ``namespace/host`` scopes) and
builds the model, collecting every error with file, line and field instead of stopping at
the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlplane.mesh import model as m
from controlplane.mesh.convert import to_model
from controlplane.mesh.hosts import host_matches, resolve_gateway, resolve_short_name, split_scoped
from controlplane.mesh.schema import destinationrule as dr_schema
from controlplane.mesh.schema import gateway as gw_schema
from controlplane.mesh.schema import serviceentry as se_schema
from controlplane.mesh.schema import sidecar as sc_schema
from controlplane.mesh.schema import virtualservice as vs_schema
from controlplane.mesh.schema.common import NOT_SUPPORTED
from envoy_mixer.common.errors import ConfigError
from envoy_mixer.common.yamlsrc import SourceDoc

PathKey = tuple[str | int, ...]

#: The schema of every networking kind the mesh models.
NETWORKING_KINDS: Mapping[str, type[BaseModel]] = {
    "ServiceEntry": se_schema.ServiceEntrySpec,
    "WorkloadEntry": se_schema.WorkloadEntrySpec,
    "Sidecar": sc_schema.SidecarSpec,
    "Gateway": gw_schema.GatewaySpec,
    "VirtualService": vs_schema.VirtualServiceSpec,
    "DestinationRule": dr_schema.DestinationRuleSpec,
}


class Metadata(BaseModel):
    """Kubernetes metadata: name, namespace, labels, annotations; server-side noise ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    namespace: str | None = Field(None, min_length=1)
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Resource(BaseModel):
    """The envelope of every Istio resource (``status`` is tolerated, as kubectl writes it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: Metadata
    spec: dict[str, Any] = {}
    status: Any = None



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


@dataclass(slots=True)
class Item:
    """One Istio resource found in a file, envelope validated."""

    doc: SourceDoc
    base: PathKey
    resource: Resource
    namespace: str

    @property
    def origin(self) -> m.Origin:
        """Where the resource is: kind, namespace/name, file and line."""
        return m.Origin(self.resource.kind, self.namespace, self.resource.metadata.name,
                        self.doc.file, self.doc.line_of(self.base))

    def line(self, *path: str | int) -> int | None:
        """The line of ``spec.<path>`` (or of its nearest ancestor)."""
        return self.doc.line_of((*self.base, "spec", *path))

    def error(self, message: str, *path: str | int, at_key: bool = False) -> ConfigError:
        """A ConfigError at ``spec.<path>``."""
        return self.doc.error(message, (*self.base, "spec", *path), at_key=at_key)


class Builder:
    """Turns validated specs into model objects, collecting every error."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.errors: list[ConfigError] = []
        #: Which ServiceEntry defined each host so far.
        self.hosts: dict[str, m.Origin] = {}

    def spec(self, item: Item) -> BaseModel | None:
        """The item's spec validated by its kind's schema (None, with errors, if invalid)."""
        schema = NETWORKING_KINDS[item.resource.kind]
        try:
            return schema.model_validate(item.resource.spec)
        except ValidationError as exc:
            self.errors.extend(schema_errors(item.doc, exc, (*item.base, "spec")))
            return None

    def fqdn(self, host: str, item: Item) -> str:
        """``host`` qualified in the item's namespace (Istio's short-name rule)."""
        return resolve_short_name(host, item.namespace, self.domain)

    # -- ServiceEntry / WorkloadEntry

    def ports(self, item: Item, ports: Sequence[se_schema.ServicePort]) -> tuple[m.Port, ...]:
        """A ServiceEntry's ports; numbers and names must be unique."""
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

    def inline_endpoints(self, item: Item, spec: se_schema.ServiceEntrySpec,
                         ports: tuple[m.Port, ...]) -> tuple[m.Endpoint, ...]:
        """A ServiceEntry's ``endpoints``: addresses fit the resolution, port names exist."""
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

    def service_entry(self, item: Item, spec: se_schema.ServiceEntrySpec,
                      workloads: Sequence[m.Workload]) -> list[m.Service]:
        """One Service per host, endpoints inline or selected among ``workloads``."""
        ports = self.ports(item, spec.ports)
        if spec.endpoints and spec.workload_selector is not None:
            self.errors.append(item.error("set only one of endpoints and workloadSelector",
                                          "workloadSelector", at_key=True))
        for i, host in enumerate(spec.hosts):
            if host in self.hosts:
                # Istio merges ServiceEntries sharing a host; here a host has one definition,
                # so what a proxy is told about it never depends on how files would merge.
                other = self.hosts[host]
                self.errors.append(item.error(
                    f"host '{host}' is already defined by ServiceEntry {other.key} "
                    f"({other.file}:{other.line}): a host has one ServiceEntry", "hosts", i))
                continue
            self.hosts[host] = item.origin
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

    def workload_entry(self, item: Item, spec: se_schema.WorkloadEntrySpec) -> m.Workload | None:
        """A WorkloadEntry as a Workload (None, with an error, without an address)."""
        if not spec.address:
            self.errors.append(item.error("missing required key 'address'", "address"))
            return None
        meta = item.resource.metadata
        # Istio merges metadata.labels into the spec's labels, metadata winning a clash.
        labels = {**spec.labels, **meta.labels}
        return m.Workload(meta.name, item.namespace, spec.address, m.frozen_map(labels),
                          spec.service_account, m.frozen_map(spec.ports), item.origin,
                          spec.weight)

    # -- Sidecar

    def sidecar(self, item: Item, spec: sc_schema.SidecarSpec) -> m.Sidecar:
        """A Sidecar: ingress listeners need a defaultEndpoint, egress hosts ``ns/host``."""
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
        self.listener_ports(item, ingress, egress)
        selector = spec.workload_selector.labels if spec.workload_selector else None
        policy = spec.outbound_traffic_policy.mode if spec.outbound_traffic_policy else "ALLOW_ANY"
        return m.Sidecar(item.origin, m.frozen_map(selector) if selector is not None else None,
                         tuple(ingress), tuple(egress), policy)

    def listener_ports(self, item: Item, ingress: Sequence[m.IngressListener],
                       egress: Sequence[m.EgressListener]) -> None:
        """Each bind address and port is used by one listener of the Sidecar."""
        # One Envoy binds every listener of its Sidecar: a bind address and port used twice
        # would make it reject the whole listener set.
        seen: dict[tuple[str, int], str] = {}
        listeners: list[tuple[str, int, m.Port | None, str]] = [
            ("ingress", i, x.port, x.bind) for i, x in enumerate(ingress)]
        listeners += [("egress", i, x.port, x.bind) for i, x in enumerate(egress)]
        for section, i, port, bind in listeners:
            if port is None:
                continue
            key = (bind or "0.0.0.0", port.number)
            if key in seen:
                self.errors.append(item.error(
                    f"port {port.number} on {key[0]} is already used by {seen[key]}",
                    section, i, "port", "number"))
            else:
                seen[key] = f"{section}[{i}]"

    def capture(self, item: Item, mode: str, *path: str | int) -> None:
        """captureMode IPTABLES needs traffic capture, which this mesh does not have."""
        if mode == "IPTABLES":
            self.errors.append(item.error(
                "not supported: captureMode IPTABLES (this mesh has no traffic capture; use "
                "NONE with bind and port)", *path, "captureMode"))

    def bind(self, item: Item, bind: str, *path: str | int) -> None:
        """A ``bind`` is an IP address or a unix socket."""
        if bind and not _ip_or_unix(bind):
            self.errors.append(item.error(f"invalid bind '{bind}' (expected an IP address or "
                                          "unix:///path)", *path, "bind"))

    # -- Gateway

    def gateway(self, item: Item, spec: gw_schema.GatewaySpec) -> m.Gateway:
        """A Gateway: hosts scoped, TLS servers with their certificate files."""
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

    def virtual_service(self, item: Item, spec: vs_schema.VirtualServiceSpec) -> m.VirtualService:
        """A VirtualService: hosts and destinations qualified, gateways resolved."""
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

    def destination(self, item: Item, d: vs_schema.Destination, where: PathKey
                    ) -> m.Destination:
        """A route destination with its host qualified and its line kept."""
        return m.Destination(self.fqdn(d.host, item), d.subset,
                             d.port.number if d.port else None, d.host, item.line(*where))

    def match(self, item: Item, x: vs_schema.HTTPMatchRequest, where: PathKey) -> m.HttpMatch:
        """One ``match[]`` entry; regexes are checked."""
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

    def regex(self, item: Item, pattern: str, where: PathKey) -> None:
        """A regex must be valid RE2 (what Envoy runs)."""
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

    def destination_rule(self, item: Item, spec: dr_schema.DestinationRuleSpec,
                         services: Sequence[m.Service]) -> m.DestinationRule:
        """A DestinationRule: subset names unique, each resolved to its endpoints."""
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
