"""Analyzers over a loaded ``Mesh``: what ``istioctl analyze`` finds across files.

Each analyzer is a pure function ``Mesh -> findings``. A load error means a file is wrong on
its own (``loader``); a finding means files disagree with each other (a route to a host no
ServiceEntry defines) or something is legal but surely not what was meant (a Sidecar that
selects nothing). Codes are Istio's (``IST0101`` ReferencedResourceNotFound, ...) where Istio
has the same analyzer, at Istio's level; ours start with ``MIX`` (see ``docs/mesh.md``).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from controlplane.mesh.hosts import host_matches, hosts_overlap
from controlplane.mesh.model import (
    MESH_GATEWAY,
    ROOT_NAMESPACE,
    HttpMatch,
    Mesh,
    Origin,
    Port,
    VirtualService,
    labels_match,
)

Level = Literal["Error", "Warning", "Info"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One analyzer message about one resource (``line``: the exact line, if known)."""

    level: Level
    code: str
    name: str
    message: str
    origin: Origin
    line: int | None = None

    @property
    def where(self) -> str:
        """``file:line`` of the finding."""
        line = self.line if self.line is not None else self.origin.line
        return f"{self.origin.file}:{line}" if line is not None else self.origin.file

    def __str__(self) -> str:
        return (f"{self.level} [{self.code}] ({self.origin.kind} {self.origin.key} "
                f"{self.where}) {self.message}")

    def to_dict(self) -> dict[str, object]:
        """The finding as JSON-friendly data (``mixer analyze --json``)."""
        return {
            "level": self.level, "code": self.code, "name": self.name,
            "message": self.message, "kind": self.origin.kind,
            "namespace": self.origin.namespace, "resource": self.origin.name,
            "file": self.origin.file,
            "line": self.line if self.line is not None else self.origin.line,
        }


def _not_found(origin: Origin, what: str, name: str, line: int | None) -> Finding:
    return Finding("Error", "IST0101", "ReferencedResourceNotFound",
                   f'Referenced {what} not found: "{name}"', origin, line)


def _labels(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _no_workloads(origin: Origin, selector: Mapping[str, str]) -> Finding:
    return Finding("Warning", "IST0127", "NoMatchingWorkloadsFound",
                   "No matching workloads for this resource with the following labels: "
                   f"{_labels(selector)}", origin)


# --------------------------------------------------------------------------- VirtualService


def _service_known(mesh: Mesh, host: str) -> bool:
    return mesh.service(host) is not None or any(
        s.host.startswith("*") and host_matches(s.host, host) for s in mesh.services)


def _destination_hosts(mesh: Mesh) -> Iterator[Finding]:
    """IST0101: a route to a host no ServiceEntry defines."""
    for vs in mesh.virtual_services:
        for d in vs.destinations():
            if not _service_known(mesh, d.host):
                yield _not_found(vs.origin, "host", d.written or d.host, d.line)


def _destination_subsets(mesh: Mesh) -> Iterator[Finding]:
    """IST0101: a route to a subset no DestinationRule for that host defines."""
    for vs in mesh.virtual_services:
        for d in vs.destinations():
            if not d.subset:
                continue
            rules = [r for r in mesh.destination_rules if host_matches(r.host, d.host)]
            if not any(r.subset(d.subset) for r in rules):
                yield _not_found(vs.origin, "host+subset in destinationrule",
                                 f"{d.written or d.host}+{d.subset}", d.line)


def _destination_ports(mesh: Mesh) -> Iterator[Finding]:
    """IST0112 when a multi-port service is routed to without a port; IST0101 for a port the
    service does not have."""
    for vs in mesh.virtual_services:
        for d in vs.destinations():
            service = mesh.service(d.host)
            if service is None:
                continue
            if d.port is None and len(service.ports) > 1:
                numbers = ", ".join(str(p.number) for p in service.ports)
                yield Finding(
                    "Error", "IST0112", "VirtualServiceDestinationPortSelectorRequired",
                    f'This VirtualService routes to a service "{d.host}" that exposes '
                    f"multiple ports [{numbers}]: specify the destination port",
                    vs.origin, d.line)
            elif d.port is not None and service.port(d.port) is None:
                yield _not_found(vs.origin, "host:port", f"{d.written or d.host}:{d.port}",
                                 d.line)


def _gateway_refs(mesh: Mesh) -> Iterator[Finding]:
    """IST0101: a VirtualService bound to a Gateway that does not exist."""
    for vs in mesh.virtual_services:
        for g in vs.gateways:
            if g != MESH_GATEWAY and mesh.gateway(g) is None:
                yield _not_found(vs.origin, "gateway", g, vs.origin.line)


def _conflicting_hosts(mesh: Mesh) -> Iterator[Finding]:
    """IST0109: two VirtualServices for the same host on the mesh gateway (the sidecars).

    Only the mesh gateway: VirtualServices bound to a Gateway with the same host are merged
    (Istio supports splitting a gateway's routes across resources), the sidecars' are not.
    """
    owners: dict[str, list[VirtualService]] = defaultdict(list)
    for vs in mesh.virtual_services:
        if MESH_GATEWAY in vs.gateways:
            for host in dict.fromkeys(vs.hosts):
                owners[host].append(vs)
    for host, services in owners.items():
        if len(services) < 2:
            continue
        names = ", ".join(v.origin.key for v in services)
        for vs in services:
            yield Finding(
                "Error", "IST0109", "ConflictingMeshGatewayVirtualServiceHosts",
                f'The VirtualServices {names} define the same host "{host}" on the mesh '
                "gateway: which one applies is undefined; merge them into one VirtualService",
                vs.origin)


def _hosts_in_gateway(mesh: Mesh) -> Iterator[Finding]:
    """IST0132: a VirtualService host that the Gateway it is bound to does not serve."""
    for vs in mesh.virtual_services:
        for key in vs.gateways:
            gateway = mesh.gateway(key)
            if gateway is None:
                continue
            served = [
                h.host for s in gateway.servers for h in s.hosts
                if h.namespace in ("*", vs.origin.namespace)
                or (h.namespace == "." and gateway.origin.namespace == vs.origin.namespace)
            ]
            missing = [h for h in vs.hosts if not any(hosts_overlap(p, h) for p in served)]
            if missing:
                yield Finding(
                    "Warning", "IST0132", "VirtualServiceHostNotFoundInGateway",
                    f"one or more host(s) [{', '.join(missing)}] defined in VirtualService "
                    f"{vs.origin.key} not found in Gateway {key}", vs.origin)


def _unreachable_rules(mesh: Mesh) -> Iterator[Finding]:
    """IST0130: a rule after one that takes every request, or whose every match an earlier
    rule already has, is never used; IST0131 (Info): one match an earlier rule already has."""
    everything = HttpMatch()
    for vs in mesh.virtual_services:
        earlier: dict[HttpMatch, int] = {}
        catch_all: int | None = None

        def label(index: int, vs: VirtualService = vs) -> str:
            return vs.http[index].name or f"#{index}"

        for j, route in enumerate(vs.http):
            if catch_all is not None:
                yield Finding(
                    "Warning", "IST0130", "VirtualServiceUnreachableRule",
                    f"VirtualService rule {label(j)} not used (rule {label(catch_all)} has no "
                    "match and takes every request)", vs.origin, route.line)
                continue
            # A match's name is a label, not a condition: two matches differing only by name
            # are the same match.
            keys = [dataclasses.replace(x, name="") for x in route.match]
            if not keys or everything in keys:
                catch_all = j
                continue
            firsts = [earlier.get(k) for k in keys]
            if all(f is not None for f in firsts):
                rules = ", ".join(dict.fromkeys(label(f) for f in firsts if f is not None))
                yield Finding(
                    "Warning", "IST0130", "VirtualServiceUnreachableRule",
                    f"VirtualService rule {label(j)} not used (every match is already in rule "
                    f"{rules})", vs.origin, route.line)
            else:
                for n, first in enumerate(firsts):
                    if first is not None:
                        yield Finding(
                            "Info", "IST0131", "VirtualServiceIneffectiveMatch",
                            f"VirtualService rule {label(j)} match #{n} is not used "
                            f"(duplicate/overlapping match in rule {label(first)})",
                            vs.origin, route.line)
            for key in keys:
                earlier.setdefault(key, j)


# -------------------------------------------------------------------------- DestinationRule


def _empty_subsets(mesh: Mesh) -> Iterator[Finding]:
    """IST0173: a subset whose labels select none of the service's endpoints."""
    for rule in mesh.destination_rules:
        if not _service_known(mesh, rule.host):
            continue  # IST0174 covers the rule as a whole
        for subset in rule.subsets:
            if not subset.endpoints:
                yield Finding(
                    "Error", "IST0173", "DestinationRuleSubsetNotSelectPods",
                    f'The Subset {subset.name} defined in the DestinationRule selects no '
                    f'endpoint of "{rule.host}" (labels {_labels(subset.labels)}): requests '
                    "routed to it fail with 503 UH (no healthy upstream)",
                    rule.origin, subset.line)


def _rule_hosts(mesh: Mesh) -> Iterator[Finding]:
    """IST0174: a DestinationRule for a host no ServiceEntry defines applies to nothing."""
    for rule in mesh.destination_rules:
        if not rule.host.startswith("*") and not _service_known(mesh, rule.host):
            yield Finding("Warning", "IST0174", "UnknownDestinationRuleHost",
                          f"The host {rule.host} defined in the DestinationRule does not match "
                          "any services in the mesh", rule.origin)


def _unverified_tls(mesh: Mesh) -> Iterator[Finding]:
    """IST0128: tls mode SIMPLE without caCertificates does not verify the server."""
    for rule in mesh.destination_rules:
        policies = [(rule.traffic_policy, None)] + [(s.traffic_policy, s) for s in rule.subsets]
        for policy, subset in policies:
            tls = policy.tls if policy else None
            if tls is None or tls.mode != "SIMPLE" or tls.ca_certificates:
                continue
            where = f' (subset "{subset.name}")' if subset else ""
            yield Finding(
                "Warning", "IST0128", "NoServerCertificateVerificationDestinationLevel",
                f"DestinationRule {rule.origin.name} in namespace {rule.origin.namespace} has "
                f"TLS mode set to SIMPLE but no caCertificates are set to validate server "
                f"identity for host: {rule.host}{where}", rule.origin,
                subset.line if subset else rule.origin.line)


# ------------------------------------------------------------------------ selectors, Sidecar


def _selectors(mesh: Mesh) -> Iterator[Finding]:
    """IST0101 for a Sidecar or Gateway whose selector matches no workload, IST0127 for a
    policy or ServiceEntry (Istio's split of levels)."""
    for sidecar in mesh.sidecars:
        if sidecar.selector and not mesh.workloads_matching(sidecar.origin.namespace,
                                                            sidecar.selector):
            yield _not_found(sidecar.origin, "selector", _labels(sidecar.selector),
                             sidecar.origin.line)
    for doc in mesh.documents:
        if not doc.selector:
            continue
        namespace = doc.origin.namespace
        scope = None if namespace == ROOT_NAMESPACE else namespace
        if not mesh.workloads_matching(scope, doc.selector):
            yield _no_workloads(doc.origin, doc.selector)
    seen: set[str] = set()
    for service in mesh.services:
        key = service.origin.key
        if service.selector and key not in seen and not service.endpoints:
            seen.add(key)
            yield _no_workloads(service.origin, service.selector)
    for gateway in mesh.gateways:
        if gateway.selector and not mesh.workloads_matching(None, gateway.selector):
            yield _not_found(gateway.origin, "selector", _labels(gateway.selector),
                             gateway.origin.line)


def _sidecar_conflicts(mesh: Mesh) -> Iterator[Finding]:
    """IST0111: several Sidecars without a selector in one namespace; IST0110: several
    Sidecars selecting the same workload."""
    defaults: dict[str, list[Origin]] = defaultdict(list)
    for sidecar in mesh.sidecars:
        if not sidecar.selector:
            defaults[sidecar.origin.namespace].append(sidecar.origin)
    for namespace, origins in defaults.items():
        if len(origins) > 1:
            names = ", ".join(o.name for o in origins)
            for origin in origins:
                yield Finding(
                    "Error", "IST0111", "MultipleSidecarsWithoutWorkloadSelectors",
                    f'The Sidecars [{names}] in namespace "{namespace}" have no workload '
                    "selector: which one applies is undefined", origin)
    for workload in mesh.workloads:
        selecting = [s.origin for s in mesh.sidecars
                     if s.selector and s.origin.namespace == workload.namespace
                     and labels_match(s.selector, workload.labels)]
        if len(selecting) > 1:
            names = ", ".join(o.name for o in selecting)
            for origin in selecting:
                yield Finding(
                    "Error", "IST0110", "ConflictingSidecarWorkloadSelectors",
                    f'The Sidecars [{names}] in namespace "{workload.namespace}" select the '
                    f'same workload "{workload.name}": which one applies is undefined', origin)


def _egress_hosts(mesh: Mesh) -> Iterator[Finding]:
    """MIX0002: a Sidecar egress host that no ServiceEntry defines (the app cannot reach it
    through that listener)."""
    for sidecar in mesh.sidecars:
        for listener in sidecar.egress:
            for h in listener.hosts:
                if h.namespace == "~" or h.host.startswith("*"):
                    continue
                if not _service_known(mesh, h.host):
                    yield Finding("Warning", "MIX0002", "SidecarEgressHostNotFound",
                                  f'Sidecar egress host "{h}" matches no ServiceEntry host',
                                  sidecar.origin, listener.line)


# --------------------------------------------------------------------------------- ports


def _gateway_ports(mesh: Mesh) -> Iterator[Finding]:
    """IST0162: a Gateway server port that none of its WorkloadEntries lists (Istio checks the
    gateway's Service; here peers dial the WorkloadEntry's ports)."""
    for gateway in mesh.gateways:
        workloads = [w for w in mesh.workloads_matching(None, gateway.selector) if w.ports]
        if not gateway.selector or not workloads:
            continue
        for server in gateway.servers:
            if not any(server.port.number in w.ports.values() for w in workloads):
                yield Finding(
                    "Warning", "IST0162", "GatewayPortNotDefinedOnService",
                    f"The gateway listens on port {server.port.number}, which no WorkloadEntry "
                    f"it selects ({_labels(gateway.selector)}) lists: peers cannot reach it",
                    gateway.origin, server.line)


def _conflicting_gateways(mesh: Mesh) -> Iterator[Finding]:
    """IST0145: two Gateways with the same selector serving overlapping hosts on one port."""
    for i, a in enumerate(mesh.gateways):
        for b in mesh.gateways[i + 1:]:
            if dict(a.selector) != dict(b.selector):
                continue
            for sa in a.servers:
                for sb in b.servers:
                    if sa.port.number != sb.port.number:
                        continue
                    hosts = sorted({x.host for x in sa.hosts for y in sb.hosts
                                    if hosts_overlap(x.host, y.host)})
                    if not hosts:
                        continue
                    for mine, other, server in ((a, b, sa), (b, a, sb)):
                        yield Finding(
                            "Error", "IST0145", "ConflictingGateways",
                            f"Conflict with gateways {other.origin.key} (workload selector "
                            f"{_labels(a.selector)}, port {sa.port.number}, hosts "
                            f"{', '.join(hosts)})", mine.origin, server.line)


def _sidecar_ports(mesh: Mesh) -> Iterator[Finding]:
    """MIX0003: a Sidecar ingress port that a selected WorkloadEntry does not list: peers dial
    the WorkloadEntry's port, and without traffic capture nothing else reaches the sidecar."""
    for sidecar in mesh.sidecars:
        for workload in mesh.workloads_matching(sidecar.origin.namespace, sidecar.selector):
            if not workload.ports:
                continue
            for listener in sidecar.ingress:
                if listener.port.number not in workload.ports.values():
                    ports = ", ".join(f"{k}={v}" for k, v in sorted(workload.ports.items()))
                    yield Finding(
                        "Warning", "MIX0003", "SidecarIngressPortNotOnWorkload",
                        f"Ingress port {listener.port.number} is not a port of WorkloadEntry "
                        f"{workload.key} ({ports}): peers will not reach it", sidecar.origin,
                        listener.line)



def _ports_without_protocol(mesh: Mesh) -> Iterator[Finding]:
    """MIX0001: a port that names no protocol, so HTTP routing, policies on paths and HTTP
    metrics cannot be set up for it."""
    def finding(origin: Origin, port: Port) -> Finding:
        label = f'"{port.name}" ({port.number})' if port.name else f"{port.number}"
        return Finding("Warning", "MIX0001", "PortWithoutProtocol",
                       f"Port {label} has no protocol: set protocol (HTTP, HTTP2, GRPC, HTTPS, "
                       "TLS or TCP)", origin, port.line)

    seen: set[tuple[str, int]] = set()
    for service in mesh.services:
        for port in service.ports:
            if not port.protocol and (service.origin.key, port.number) not in seen:
                seen.add((service.origin.key, port.number))
                yield finding(service.origin, port)
    for sidecar in mesh.sidecars:
        ports = [i.port for i in sidecar.ingress] + [e.port for e in sidecar.egress if e.port]
        for port in ports:
            if not port.protocol:
                yield finding(sidecar.origin, port)


#: Every analyzer, in the order their findings are reported.
ANALYZERS: tuple[Callable[[Mesh], Iterable[Finding]], ...] = (
    _destination_hosts,
    _destination_subsets,
    _destination_ports,
    _gateway_refs,
    _conflicting_hosts,
    _hosts_in_gateway,
    _unreachable_rules,
    _empty_subsets,
    _rule_hosts,
    _unverified_tls,
    _selectors,
    _sidecar_conflicts,
    _egress_hosts,
    _gateway_ports,
    _conflicting_gateways,
    _sidecar_ports,
    _ports_without_protocol,
)


def analyze(mesh: Mesh) -> list[Finding]:
    """Every finding of every analyzer, sorted by file and line (errors first on a tie)."""
    findings = [f for analyzer in ANALYZERS for f in analyzer(mesh)]
    rank = {"Error": 0, "Warning": 1, "Info": 2}
    return sorted(findings, key=lambda f: (f.origin.file, f.line or f.origin.line or 0,
                                           rank[f.level], f.code))


def has_errors(findings: Iterable[Finding]) -> bool:
    """True if any finding is an error (``mixer analyze`` then exits 1)."""
    return any(f.level == "Error" for f in findings)


__all__ = ["ANALYZERS", "Finding", "analyze", "has_errors"]
