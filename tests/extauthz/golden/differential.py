"""Differential harness: Istio's golden RBAC in a real Envoy against ``mixer authz``.

For each golden case (``CASES``, restated from istio's ``TestGenerator_GenerateHTTP``) one Envoy
runs two listeners: "istio" carries the golden RBAC filter(s) after Envoy's own ``jwt_authn``
(which writes the ``envoy.filters.http.jwt_authn`` payload metadata the golden RBAC reads),
"mixer" carries ext_authz pointing at ``mixer authz --policy <the -in.yaml>``. Both listeners
take a PROXY protocol header first, so a test on loopback can present any source address,
destination address and destination port, then TLS with an optional client certificate.

Requests (``Probe``) are generated from each input: for every rule, every source x operation
pair is first filled with a value each field accepts, then each field in turn is swapped for
each of its values, its not-values, near misses and absence, while the others keep theirs.
Every probe is sent to both listeners and the verdicts compared.

This module is test support: plain functions and frozen data, no pytest.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "http"

#: The workload Istio's builder test generates for (``node()`` in builder_test.go).
WORKLOAD_EXTENSIONS = {"namespace": "foo", "label.app": "httpbin", "label.version": "v1"}
DEFAULT_HOST = "httpbin.foo"
DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 8080
#: The method a probe has unless a field sets one: no golden policy names it, so a probe that
#: varies one field is not allowed by some other ALLOW policy's method alone.
DEFAULT_METHOD = "PUT"


#: Fields no listener can be driven on (counted, never generated). Istio reads the metadata of
#: an arbitrary filter; no filter in either chain sets ``envoy.filters.a.b``.
UNDRIVEN_PREFIX = "experimental.envoy.filters."


@dataclass(frozen=True, slots=True)
class Case:
    """One golden case: input, output filter files in order, trust-domain bundle."""

    name: str
    input: str
    outputs: tuple[str, ...]
    trust_domain: str | None = None
    aliases: tuple[str, ...] = ()
    #: Derived cases (``fragment_cases``) carry their texts and share one service per group.
    namespace: str = "foo"
    #: Rules (by index) whose fields are varied; None: all. Other rules still get their base.
    vary_rules: tuple[int, ...] | None = None
    input_text: str | None = None
    output_texts: tuple[str, ...] = ()
    group: str | None = None

    def input_yaml(self) -> str:
        """The AuthorizationPolicy YAML of this case."""
        return self.input_text if self.input_text is not None else (GOLDEN / self.input).read_text()

    def rbac_filters(self) -> list[Any]:
        """The golden RBAC HTTP filter(s), in order."""
        texts = self.output_texts or tuple((GOLDEN / o).read_text() for o in self.outputs)
        return [yaml.safe_load(t) for t in texts]

    @property
    def service(self) -> str:
        """Which ``mixer authz`` serves this case (derived cases share one)."""
        return self.group or self.name

    @property
    def probe_trust_domains(self) -> tuple[str, ...]:
        """Trust domains probes swap into named identities: the bundle, and one outside it."""
        bundle = (self.trust_domain, *self.aliases) if self.trust_domain else ("cluster.local",)
        return (*bundle, "other-td")


#: ``TestGenerator_GenerateHTTP`` at istio 86c9f01f, minus the CUSTOM cases (see NOT_APPLICABLE).
CASES: tuple[Case, ...] = (
    Case("allow-empty-rule", "allow-empty-rule-in.yaml", ("allow-empty-rule-out.yaml",)),
    # rule[1] can never match; its fields are varied through fragment_cases instead.
    Case("allow-full-rule", "allow-full-rule-in.yaml", ("allow-full-rule-out.yaml",),
         vary_rules=(0,)),
    Case("allow-nil-rule", "allow-nil-rule-in.yaml", ("allow-nil-rule-out.yaml",)),
    Case("allow-path", "allow-path-in.yaml", ("allow-path-out.yaml",)),
    Case("audit-full-rule", "audit-full-rule-in.yaml", ("audit-full-rule-out.yaml",)),
    Case("deny-and-allow", "deny-and-allow-in.yaml",
         ("deny-and-allow-out1.yaml", "deny-and-allow-out2.yaml")),
    Case("deny-empty-rule", "deny-empty-rule-in.yaml", ("deny-empty-rule-out.yaml",)),
    Case("dry-run-allow-and-deny", "dry-run-allow-and-deny-in.yaml",
         ("dry-run-allow-and-deny-out1.yaml", "dry-run-allow-and-deny-out2.yaml")),
    Case("dry-run-allow", "dry-run-allow-in.yaml", ("dry-run-allow-out.yaml",)),
    Case("dry-run-mix", "dry-run-mix-in.yaml", ("dry-run-mix-out.yaml",)),
    Case("multiple-policies", "multiple-policies-in.yaml", ("multiple-policies-out.yaml",)),
    Case("single-policy", "single-policy-in.yaml", ("single-policy-out.yaml",)),
    Case("trust-domain-one-alias", "simple-policy-td-aliases-in.yaml",
         ("simple-policy-td-aliases-out.yaml",), "td1", ("cluster.local",)),
    Case("trust-domain-multiple-aliases", "simple-policy-multiple-td-aliases-in.yaml",
         ("simple-policy-multiple-td-aliases-out.yaml",), "td1", ("cluster.local", "some-td")),
    Case("trust-domain-wildcard-in-principal", "simple-policy-principal-with-wildcard-in.yaml",
         ("simple-policy-principal-with-wildcard-out.yaml",), "td1", ("foobar",)),
    Case("trust-domain-aliases-in-source-principal", "td-aliases-source-principal-in.yaml",
         ("td-aliases-source-principal-out.yaml",), "new-td", ("old-td", "some-trustdomain")),
    Case("trust-domains-field", "trust-domains-in.yaml", ("trust-domains-out.yaml",)),
)

#: allow-full-rule's rule[1] can never match (every field has "*" among both its values and
#: its not-values), so its fields never decide a verdict there. ``fragment_cases`` cuts it
#: into one-field policies, each paired with the piece of that same golden output Istio
#: generated for the field: Istio builds each field's matcher on its own and joins them with
#: and-rules (see allow-path or allow-empty-rule for the one-field shape). The pieces come in
#: (values, not-values) pairs, in this order. Not verbatim golden pairs, so named apart.
_FULL_RULE_PERMISSION_FIELDS = (
    ("to", "hosts"), ("to", "methods"), ("to", "paths"), ("to", "ports"),
    ("when", "destination.ip"), ("when", "destination.port"), ("when", "connection.sni"),
)
_FULL_RULE_PRINCIPAL_FIELDS = (
    ("from", "principals"), ("from", "requestPrincipals"), ("from", "namespaces"),
    ("from", "remoteIpBlocks"), ("from", "ipBlocks"), ("when", "request.headers[X-header]"),
    ("when", "source.ip"), ("when", "remote.ip"), ("when", "source.namespace"),
    ("when", "source.principal"), ("when", "request.auth.principal"),
    ("when", "request.auth.audiences"), ("when", "request.auth.presenter"),
    ("when", "request.auth.claims[iss]"), ("when", "request.auth.claims[nested1][nested2]"),
)
FRAGMENT_GROUP = "allow-full-rule-fragments"


def fragment_cases() -> list[Case]:
    """One case per (field, values|notValues) of allow-full-rule's rule[1]; see above."""
    source = next(d for d in yaml.safe_load_all((GOLDEN / "allow-full-rule-in.yaml").read_text())
                  if d)
    rule = source["spec"]["rules"][1]
    golden = yaml.safe_load((GOLDEN / "allow-full-rule-out.yaml").read_text())
    policy = golden["typedConfig"]["rules"]["policies"]["ns[foo]-policy[httpbin-1]-rule[1]"]
    pieces = {"permissions": policy["permissions"][0]["andRules"]["rules"],
              "principals": policy["principals"][0]["andIds"]["ids"]}
    cases = []
    for side, fields in (("permissions", _FULL_RULE_PERMISSION_FIELDS),
                         ("principals", _FULL_RULE_PRINCIPAL_FIELDS)):
        for i, (where, key) in enumerate(fields):
            for part in (0, 1):
                ns = f"frag{len(cases)}"
                one_rule = _one_field_rule(rule, where, key, part)
                permission = pieces[side][2 * i + part] if side == "permissions" else {"any": True}
                principal = pieces[side][2 * i + part] if side == "principals" else {"any": True}
                name = f"{ns}-policy"
                rbac = {"name": "envoy.filters.http.rbac", "typedConfig": {
                    "@type": golden["typedConfig"]["@type"],
                    "rules": {"policies": {f"ns[{ns}]-policy[{name}]-rule[0]": {
                        "permissions": [{"andRules": {"rules": [permission]}}],
                        "principals": [{"andIds": {"ids": [principal]}}]}}}}}
                text = yaml.safe_dump({
                    "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"rules": [one_rule]}}, sort_keys=False)
                label = ("values", "notValues")[part]
                cases.append(Case(f"allow-full-rule/rule[1]/{key}/{label}",
                                  "allow-full-rule-in.yaml", ("allow-full-rule-out.yaml",),
                                  namespace=ns, input_text=text,
                                  output_texts=(yaml.safe_dump(rbac, sort_keys=False),),
                                  group=FRAGMENT_GROUP))
    return cases


def _one_field_rule(rule: dict[str, Any], where: str, key: str, part: int) -> dict[str, Any]:
    if where == "when":
        cond = next(c for c in rule["when"] if c["key"] == key)
        values_key = ("values", "notValues")[part]
        return {"when": [{"key": key, values_key: cond[values_key]}]}
    block_key = "source" if where == "from" else "operation"
    block = rule[where][0][block_key]
    field_key = key if part == 0 else "not" + key[0].upper() + key[1:]
    return {where: [{block_key: {field_key: block[field_key]}}]}


#: Cases whose every request is allowed: AUDIT only logs, dry-run policies only shadow.
ALWAYS_ALLOWED = frozenset({"audit-full-rule", "dry-run-allow", "dry-run-allow-and-deny"})

#: Golden cases of that table we do not run, and why (they count as "not applicable").
NOT_APPLICABLE: dict[str, str] = {
    name: "CUSTOM action: mixer authz rejects CUSTOM by design (it is the CUSTOM provider)"
    for name in ("custom-grpc-provider-no-namespace", "custom-grpc-provider",
                 "custom-http-provider", "custom-bad-multiple-providers",
                 "custom-bad-invalid-config")
}


# --------------------------------------------------------------------------------------------
# Probes: one request with everything both listeners can see.


@dataclass(frozen=True, slots=True)
class Probe:
    """One request: HTTP parts, connection parts (PROXY header, TLS) and JWT claims."""

    method: str = DEFAULT_METHOD
    path: str = "/"
    host: str = DEFAULT_HOST
    headers: tuple[tuple[str, str], ...] = ()
    # Client certificate SANs ("URI:..", "DNS:.."); () a certificate without SANs; None none.
    sans: tuple[str, ...] | None = None
    sni: str | None = None
    src_ip: str = DEFAULT_IP
    dst_ip: str = DEFAULT_IP
    dst_port: int = DEFAULT_PORT
    claims: str | None = None  # JSON of the JWT payload, or no token
    # What this probe varies (its mismatch class); not part of its identity, so two fields
    # producing the same request send it once.
    tag: str = field(default="base", compare=False)

    @property
    def connection_key(self) -> tuple[Any, ...]:
        """Probes with equal keys can share one connection (same PROXY header, cert, SNI)."""
        return (self.src_ip, self.dst_ip, self.dst_port, self.sans, self.sni)

    def describe(self) -> str:
        """A compact one-line rendering for failure messages."""
        parts = [f"{self.method} {self.path}", f"host={self.host}"]
        parts += [f"{k}: {v!r}" for k, v in self.headers]
        if self.sans is not None:
            parts.append(f"cert={list(self.sans)}")
        if self.sni is not None:
            parts.append(f"sni={self.sni}")
        if self.src_ip != DEFAULT_IP:
            parts.append(f"src={self.src_ip}")
        if (self.dst_ip, self.dst_port) != (DEFAULT_IP, DEFAULT_PORT):
            parts.append(f"dst={self.dst_ip}:{self.dst_port}")
        if self.claims is not None:
            parts.append(f"jwt={self.claims}")
        return " ".join(parts)


@dataclass
class _Spec:
    """A probe under construction; fields are filled slot by slot, then frozen."""

    method: str = DEFAULT_METHOD
    path: str = "/"
    host: str = DEFAULT_HOST
    headers: dict[str, list[str]] = field(default_factory=dict)
    sans: dict[int, list[str]] = field(default_factory=dict)
    sni: str | None = None
    src_ip: str = DEFAULT_IP
    xff: list[str] | None = None
    dst_ip: str = DEFAULT_IP
    dst_port: int = DEFAULT_PORT
    claims: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> _Spec:
        """A deep enough copy: the dict/list slots are copied, strings are immutable."""
        return replace(
            self, headers={k: list(v) for k, v in self.headers.items()},
            sans={k: list(v) for k, v in self.sans.items()},
            xff=None if self.xff is None else list(self.xff),
            claims=json.loads(json.dumps(self.claims)),
        )

    def freeze(self, tag: str) -> Probe:
        """The immutable probe; a token gets a default issuer/subject if a claim needs one."""
        headers = [(name, value) for name, values in self.headers.items() for value in values]
        if self.xff is not None:
            headers.append(("x-forwarded-for", ", ".join(self.xff)))
        sans = [san for slot in sorted(self.sans) for san in self.sans[slot]]
        claims = None
        if self.claims:
            body = {"iss": "https://issuer.example", "sub": "alice", **self.claims}
            claims = json.dumps(body, sort_keys=True)
        return Probe(
            method=self.method, path=self.path, host=self.host, headers=tuple(headers),
            sans=tuple(sans) if sans else None, sni=self.sni, src_ip=self.src_ip,
            dst_ip=self.dst_ip, dst_port=self.dst_port, claims=claims, tag=tag,
        )


Apply = Callable[[_Spec], None]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a rule: what it constrains, its values and its not-values."""

    kind: str
    values: tuple[str, ...]
    not_values: tuple[str, ...]
    arg: tuple[str, ...] = ()  # header name, or claim path
    slot: int = 0  # where its SAN/claim goes, so fields of one rule do not overwrite each other


_SOURCE_KEYS = {
    "principals": "principal", "requestPrincipals": "request_principal",
    "namespaces": "namespace", "ipBlocks": "source_ip", "remoteIpBlocks": "remote_ip",
    "serviceAccounts": "service_account", "trustDomains": "trust_domain",
}
_OPERATION_KEYS = {"methods": "method", "hosts": "host", "ports": "port", "paths": "path"}
_CONDITION_KEYS = {
    "source.ip": "source_ip", "remote.ip": "remote_ip", "source.namespace": "namespace",
    "source.principal": "principal", "request.auth.principal": "request_principal",
    "destination.ip": "dest_ip", "destination.port": "port", "connection.sni": "sni",
}


def _pairs(block: dict[str, Any], keys: dict[str, str], slot0: int) -> list[Field]:
    out = []
    for i, (key, kind) in enumerate(keys.items()):
        not_key = "not" + key[0].upper() + key[1:]
        values, not_values = block.get(key) or [], block.get(not_key) or []
        if values or not_values:
            out.append(Field(kind, tuple(map(str, values)), tuple(map(str, not_values)),
                             slot=slot0 + i))
    return out


def _condition(cond: dict[str, Any], slot: int) -> Field | None:
    key = str(cond["key"])
    values = tuple(map(str, cond.get("values") or []))
    not_values = tuple(map(str, cond.get("notValues") or []))
    if key in _CONDITION_KEYS:
        return Field(_CONDITION_KEYS[key], values, not_values, slot=slot)
    if m := re.fullmatch(r"request\.headers\[(.+)\]", key):
        return Field("header", values, not_values, (m.group(1),), slot)
    if key == "request.auth.audiences":
        return Field("claim", values, not_values, ("aud",), slot)
    if key == "request.auth.presenter":
        return Field("claim", values, not_values, ("azp",), slot)
    if key.startswith("request.auth.claims["):
        return Field("claim", values, not_values, tuple(re.findall(r"\[([^\]]+)\]", key)), slot)
    return None


def rule_combos(rule: dict[str, Any]) -> Iterator[list[Field]]:
    """Each source x operation pair of a rule, with its conditions: the fields to satisfy."""
    whens = [f for i, c in enumerate(rule.get("when") or [])
             if (f := _condition(c, 100 + i)) is not None]
    sources = [f.get("source") or {} for f in rule.get("from") or []] or [{}]
    operations = [t.get("operation") or {} for t in rule.get("to") or []] or [{}]
    for src in sources:
        for op in operations:
            yield _pairs(src, _SOURCE_KEYS, 0) + _pairs(op, _OPERATION_KEYS, 50) + whens


def undriven_conditions(policies: Sequence[dict[str, Any]]) -> int:
    """How many conditions of these policies no probe can drive."""
    return sum(1 for p in policies for r in (p.get("spec") or {}).get("rules") or []
               for c in r.get("when") or [] if str(c["key"]).startswith(UNDRIVEN_PREFIX))


# String patterns the Istio way: "*" presence, "x*" prefix, "*x" suffix, else exact.

def _examples(pattern: str, filler: str = "x") -> list[str]:
    if pattern == "*":
        return ["any-" + filler]
    if pattern.endswith("*"):
        return [pattern[:-1] + filler, pattern[:-1]]
    if pattern.startswith("*"):
        return [filler + pattern[1:], pattern[1:]]
    return [pattern]


def _near_misses(pattern: str) -> list[str]:
    core = pattern.strip("*")
    if not core:
        return []
    out = [core + "z", "z" + core, core[:-1]]
    if core.upper() != core:
        out.append(core.upper())
    return out


def _ip_examples(block: str) -> tuple[list[str], list[str]]:
    """Addresses inside a block (first, last) and just outside it."""
    net = ipaddress.ip_network(block, strict=False)
    inside = [str(net.network_address), str(net.broadcast_address)]
    outside = [str(net.broadcast_address + 1)]
    if int(net.network_address) > 0:
        outside.append(str(net.network_address - 1))
    return list(dict.fromkeys(inside)), outside


Variant = tuple[str, Apply]


def _set(attr: str, value: Any) -> Apply:
    return lambda s: setattr(s, attr, value)


def _san(slot: int, sans: list[str] | None) -> Apply:
    def apply(s: _Spec) -> None:
        if sans is None:
            s.sans.pop(slot, None)
        else:
            s.sans[slot] = list(sans)
    return apply


def _claims(path: Sequence[str], value: Any) -> Apply:
    def apply(s: _Spec) -> None:
        node = s.claims
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return apply


def _principal_claims(principal: str | None, split: str = "last") -> Apply:
    def apply(s: _Spec) -> None:
        if principal is None:
            s.claims.pop("iss", None)
            s.claims.pop("sub", None)
            return
        if "/" not in principal:
            iss, sub = principal, ""
        elif split == "last":
            iss, _, sub = principal.rpartition("/")
        else:
            iss, _, sub = principal.partition("/")
        s.claims["iss"], s.claims["sub"] = iss, sub
    return apply


def _concretes(f: Field) -> list[tuple[str, str]]:
    """(origin, concrete string): examples of values, of not-values, and near misses."""
    out = [("value", c) for v in f.values for c in _examples(v)]
    out += [("notvalue", c) for v in f.not_values for c in _examples(v)]
    out += [("near-miss", c) for v in f.values + f.not_values for c in _near_misses(v)]
    return out


def variants(f: Field, trust_domains: Sequence[str] = ()) -> list[Variant]:
    """Every way this probe generator varies one field; the first is the satisfying one.

    ``trust_domains`` (the case's bundle, plus one outside it) replace the trust domain of
    identities the policy names. Tags name the class a disagreement falls into (see
    ``CLASS_DESCRIPTIONS``). One branch per field kind, on purpose.
    """
    k, out = f.kind, []
    if k in ("source_ip", "remote_ip", "dest_ip"):
        for origin, vs in (("value", f.values), ("notvalue", f.not_values)):
            for v in vs:
                inside, outside = _ip_examples(v)
                for ip in inside:
                    out += _ip_variants(k, origin, ip)
                for ip in outside:  # near misses in the two plain forms only (keeps it fast)
                    out += _ip_variants(k, "near-miss", ip)[:2]
        return out
    if k == "port":
        for origin, vs in (("value", f.values), ("notvalue", f.not_values)):
            out += [(f"{origin}:port", _set("dst_port", int(v))) for v in vs]
        out += [("near-miss:port", _set("dst_port", int(v) + 1)) for v in f.values]
        return out
    concretes = _concretes(f)
    if k == "path":
        for origin, c in concretes:
            forms = _path_forms(c)[:1] if origin == "near-miss" else _path_forms(c)
            out += [(f"{origin}:{tag}", _set("path", p)) for tag, p in forms]
    elif k == "host":
        for origin, c in concretes:
            out += [(f"{origin}:host", _set("host", c)),
                    (f"{origin}:host-with-port", _set("host", c + ":80")),
                    (f"{origin}:host-trailing-dot", _set("host", c + "."))]
            if c.swapcase() != c:
                out.append((f"{origin}:host-case", _set("host", c.swapcase())))
    elif k == "method":
        for origin, c in concretes:
            out.append((f"{origin}:method", _set("method", c)))
            if c.lower() != c:
                out.append((f"{origin}:method-lower-case", _set("method", c.lower())))
    elif k == "sni":
        for origin, c in concretes:
            out.append((f"{origin}:sni", _set("sni", c)))
            if c.upper() != c:
                out.append((f"{origin}:sni-upper-case", _set("sni", c.upper())))
        out.append(("absent:sni", _set("sni", None)))
    elif k == "header":
        name = f.arg[0]

        def lines(values: list[str], header: str = name.lower()) -> Apply:
            def apply(s: _Spec) -> None:
                s.headers.pop(name.lower(), None)
                s.headers.pop(name.upper(), None)
                s.headers[header] = list(values)
            return apply

        for origin, c in concretes:
            out += [(f"{origin}:header", lines([c])),
                    (f"{origin}:header-padded", lines([f"  {c} "])),
                    (f"{origin}:header-comma-joined", lines([f"{c},other"])),
                    (f"{origin}:header-repeated-line-after", lines(["other", c])),
                    (f"{origin}:header-repeated-line-before", lines([c, "other"])),
                    (f"{origin}:header-same-line-twice", lines([c, c])),
                    (f"{origin}:header-name-case", lines([c], name.upper()))]
        out += [("empty:header-empty-value", lines([""])),
                ("empty:header-empty-line-and-value", lines(["", "header"])),
                ("absent:header", lines([]))]
    elif k == "principal":
        for origin, c in concretes:
            uri = "URI:spiffe://" + c
            out.append((f"{origin}:principal", _san(f.slot, [uri])))
            if origin == "near-miss":
                continue  # the other certificate forms only for values (handshakes are dear)
            head, sep, rest = c.partition("/ns/")
            if sep and "*" not in head:
                out += [(f"{origin}:principal-trust-domain-{td}",
                         _san(f.slot, [f"URI:spiffe://{td}/ns/{rest}"]))
                        for td in trust_domains if td != head]
            out += [(f"{origin}:principal-second-uri-san",
                     _san(f.slot, ["URI:spiffe://cluster.local/ns/other/sa/other", uri])),
                    (f"{origin}:principal-dns-san-only", _san(f.slot, ["DNS:" + c])),
                    (f"{origin}:principal-scheme-upper-case",
                     _san(f.slot, ["URI:SPIFFE://" + c])),
                    (f"{origin}:principal-uri-without-spiffe", _san(f.slot, ["URI:" + c]))]
        out.append(("absent:principal", _san(f.slot, None)))
    elif k == "namespace":
        for origin, c in concretes:
            out.append((f"{origin}:namespace",
                        _san(f.slot, [f"URI:spiffe://cluster.local/ns/{c}/sa/default"])))
            if origin == "near-miss":
                continue
            out += [(f"{origin}:namespace-no-sa",
                     _san(f.slot, [f"URI:spiffe://cluster.local/ns/{c}"])),
                    (f"{origin}:namespace-dns-san",
                     _san(f.slot, [f"DNS:cluster.local/ns/{c}/sa/default"])),
                    (f"{origin}:namespace-deeper-path",
                     _san(f.slot, [f"URI:spiffe://cluster.local/x/ns/{c}/sa/default"])),
                    (f"{origin}:namespace-second-uri-san",
                     _san(f.slot, ["URI:spiffe://cluster.local/ns/other/sa/default",
                                   f"URI:spiffe://cluster.local/ns/{c}/sa/default"]))]
        out.append(("absent:namespace", _san(f.slot, None)))
    elif k == "service_account":
        for origin, v in [("value", v) for v in f.values] + [("notvalue", v)
                                                            for v in f.not_values]:
            ns, _, sa = v.rpartition("/")
            ns = ns or "foo"
            base = f"spiffe://cluster.local/ns/{ns}/sa/{sa}"
            out += [(f"{origin}:service-account", _san(f.slot, ["URI:" + base])),
                    (f"{origin}:service-account-extra-segment",
                     _san(f.slot, ["URI:" + base + "/extra"])),
                    (f"{origin}:service-account-middle-segment",
                     _san(f.slot, [f"URI:spiffe://cluster.local/ns/{ns}/x/sa/{sa}"])),
                    (f"{origin}:service-account-dns-san",
                     _san(f.slot, [f"DNS:spiffe://cluster.local/ns/{ns}/sa/{sa}"])),
                    (f"{origin}:service-account-other-trust-domain",
                     _san(f.slot, [f"URI:spiffe://other.td/ns/{ns}/sa/{sa}"])),
                    (f"{origin}:service-account-other-namespace",
                     _san(f.slot, [f"URI:spiffe://cluster.local/ns/{ns}x/sa/{sa}"])),
                    ("near-miss:service-account", _san(f.slot, ["URI:" + base + "x"])),
                    ("near-miss:service-account-prefix",
                     _san(f.slot, [f"URI:spiffe://cluster.local/ns/{ns}/sa/x{sa}"]))]
        out.append(("absent:service-account", _san(f.slot, None)))
    elif k == "trust_domain":
        for origin, c in concretes:
            out += [(f"{origin}:trust-domain",
                     _san(f.slot, [f"URI:spiffe://{c}/ns/foo/sa/default"])),
                    (f"{origin}:trust-domain-case",
                     _san(f.slot, [f"URI:spiffe://{c.upper()}/ns/foo/sa/default"]))]
        out += [(f"bundle:trust-domain-{td}",
                 _san(f.slot, [f"URI:spiffe://{td}/ns/foo/sa/default"])) for td in trust_domains]
        out.append(("absent:trust-domain", _san(f.slot, None)))
    elif k == "request_principal":
        for origin, c in concretes:
            out.append((f"{origin}:request-principal", _principal_claims(c)))
            out.append((f"{origin}:request-principal-with-subject",
                        _principal_claims(c + "/sub")))
            if "/" in c:
                out.append((f"{origin}:request-principal-split-first-slash",
                            _principal_claims(c, "first")))
        out += [("nested:request-principal-url-issuer",
                 _principal_claims("https://example.com/a/b")),
                ("absent:request-principal", _principal_claims(None))]
    elif k == "claim":
        for origin, c in concretes:
            out.append((f"{origin}:claim", _claims(f.arg, c)))
            if f.arg not in (("iss",), ("sub",)):  # a list issuer is no token at all
                out += [(f"{origin}:claim-list", _claims(f.arg, ["other", c])),
                        (f"{origin}:claim-space-separated", _claims(f.arg, f"other {c}"))]
        out.append(("absent:claim", _claims(f.arg, None)))
    return out


def _ip_variants(kind: str, origin: str, ip: str) -> list[Variant]:
    if kind == "dest_ip":
        return [(f"{origin}:destination-ip", _set("dst_ip", ip))]
    if kind == "source_ip":
        return [(f"{origin}:source-ip", _set("src_ip", ip)),
                (f"{origin}:source-ip-only-in-xff", _set("xff", [ip]))]
    # remote.ip: the right-most X-Forwarded-For entry (Istio's inbound HCM trusts 0 hops and
    # does not use the remote address), or the peer when the header is absent.
    return [(f"{origin}:remote-ip-xff", _set("xff", [ip])),
            (f"{origin}:remote-ip-peer-without-xff", _set("src_ip", ip)),
            (f"{origin}:remote-ip-left-of-xff", _set("xff", [ip, "127.0.0.9"])),
            (f"{origin}:remote-ip-xff-lines", _xff_lines([ip], ["127.0.0.9"])),
            (f"{origin}:remote-ip-xff-lines", _xff_lines(["127.0.0.9"], [ip])),
            (f"{origin}:remote-ip-peer-with-garbage-xff", _peer_and_xff(ip, "not-an-ip")),
            (f"{origin}:remote-ip-xff-garbage-last", _set("xff", [ip, "not-an-ip"]))]


def _xff_lines(*lines: list[str]) -> Apply:
    def apply(s: _Spec) -> None:
        s.xff = None
        s.headers["x-forwarded-for"] = [", ".join(line) for line in lines]
    return apply


def _peer_and_xff(peer: str, xff: str) -> Apply:
    def apply(s: _Spec) -> None:
        s.src_ip, s.xff = peer, [xff]
    return apply


def _path_forms(c: str) -> list[tuple[str, str]]:
    """Concrete request paths for one pattern example (templates instantiated)."""
    if not c.startswith("/"):
        # Envoy only ever sees absolute paths, so Istio's "x" can never match; "/x" must not.
        return [("path-without-leading-slash" if tag == "path" else tag, p)
                for tag, p in _path_forms("/" + c)]
    if "{" in c:
        one = c.replace("{**}", "a/b").replace("{*}", "x")
        return [("path-template", one),
                ("path-template-more-segments", c.replace("{**}", "a").replace("{*}", "x/y")),
                ("path-template-empty-segment", c.replace("{**}", "").replace("{*}", ""))]
    return [("path", c), ("path-trailing-slash", c + "/"), ("path-query", c + "?q=1"),
            ("path-case", c.upper()), ("path-dot-segments", "/x/.." + c),
            ("path-percent-encoded", re.sub(r"^/([A-Za-z])", lambda m: f"/%{ord(m[1]):02X}", c)),
            ("path-double-slash", "/" + c)]


#: Probes every case gets, whatever its policy mentions: plain, with a peer, with a token.
COMMON: tuple[Probe, ...] = (
    Probe(),
    Probe(method="GET", tag="common"),
    Probe(method="POST", path="/x", tag="common"),
    Probe(sans=("URI:spiffe://cluster.local/ns/foo/sa/x",), tag="common:peer"),
    Probe(sans=("URI:spiffe://cluster.local/ns/foo/sa/x", "URI:spiffe://td2/ns/bar/sa/y"),
          tag="common:two-uri-sans"),
    Probe(sans=("DNS:httpbin.foo",), tag="common:dns-san-only"),
    Probe(sans=(), tag="common:subject-only"),  # a certificate without any SAN
    Probe(claims=json.dumps({"iss": "https://issuer.example", "sub": "alice"}),
          tag="common:jwt"),
    Probe(headers=(("x-forwarded-for", "1.2.3.4"),), src_ip="10.0.0.1", dst_port=80,
          tag="common:addresses"),
)

#: The HTTP/1.1 methods Envoy's codec accepts (any other token, and lower case, get 400
#: before a filter runs). CONNECT is left out: it is not a plain request.
SENDABLE_METHODS = frozenset((
    "DELETE", "GET", "HEAD", "POST", "PUT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
    "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT",
    "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
))


#: A method Envoy's codec would refuse travels in this header on a GET; the first filter of
#: both listeners (``METHOD_LUA``) makes it the request's ``:method``, so Istio's RBAC and our
#: service judge the same method. Golden inputs name methods such as ``rule[0]-to[0]-method[0]``
#: that no HTTP/1 client can send, and their rules could never match otherwise.
METHOD_HEADER = "x-differential-method"
METHOD_LUA = f"""
function envoy_on_request(handle)
  local method = handle:headers():get("{METHOD_HEADER}")
  if method ~= nil then
    handle:headers():replace(":method", method)
    handle:headers():remove("{METHOD_HEADER}")
  end
end
"""


def _sendable(spec: _Spec) -> bool:
    # Python's ssl refuses an SNI that is empty or starts with a dot.
    return spec.sni is None or (spec.sni != "" and not spec.sni.startswith("."))


def generate(policies: Sequence[dict[str, Any]], trust_domains: Sequence[str] = (),
             vary_rules: Sequence[int] | None = None) -> tuple[list[Probe], int]:
    """All probes for a case's policies, deduplicated, in a stable order; and how many
    generated requests were dropped because the client cannot send them (see ``_sendable``)."""
    probes: dict[Probe, None] = dict.fromkeys(COMMON)
    unsendable: set[Probe] = set()
    for policy in policies:
        for index, rule in enumerate((policy.get("spec") or {}).get("rules") or []):
            vary = vary_rules is None or index in vary_rules
            for combo in rule_combos(rule):
                per_field = [variants(f, trust_domains) for f in combo]
                base = _Spec()
                for vs in per_field:
                    # The first accepted value the client can send; if none, the field stays
                    # at its default and the rule cannot match (the other fields are still
                    # varied against it).
                    for tag, apply in vs:
                        trial = base.copy()
                        apply(trial)
                        if tag.startswith("value:") and _sendable(trial):
                            base = trial
                            break
                kinds = "+".join(dict.fromkeys(f.kind for f in combo)) or "empty-rule"
                probes.setdefault(base.freeze(f"base:{kinds}"), None)
                for vs in per_field if vary else ():
                    for tag, apply in vs:
                        spec = base.copy()
                        apply(spec)
                        if _sendable(spec):
                            probes.setdefault(spec.freeze(tag), None)
                        else:
                            unsendable.add(spec.freeze(tag))
    return list(probes), len(unsendable - set(probes))


# --------------------------------------------------------------------------------------------
# Certificates (a CA made for the test), JWTs, the mixer's policy file.


class Pki:
    """A test CA, Envoy's server certificate, and client certificates made on demand."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec = x509, hashes, serialization, ec
        self._oid = NameOID
        self.dir = workdir
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "differential test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.ca = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path = self._write("ca.pem", self.ca.public_bytes(serialization.Encoding.PEM))
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.server_cert, self.server_key = self._issue("server", ("DNS:" + DEFAULT_HOST,))
        self._clients: dict[tuple[str, ...], tuple[Path, Path]] = {}

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _issue(self, stem: str, sans: Sequence[str]) -> tuple[Path, Path]:
        x509, ser = self._x509, self._ser
        # One key for every certificate: only the SANs matter here, and key generation is the
        # slow part of making a thousand certificates.
        key = self._leaf_key
        names: list[x509.GeneralName] = []
        for san in sans:
            kind, _, value = san.partition(":")
            names.append(x509.UniformResourceIdentifier(value) if kind == "URI"
                         else x509.DNSName(value))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, "workload")]))
            .issuer_name(self.ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.ca_key, self._hashes.SHA256())
        cert_path = self._write(f"{stem}.pem", cert.public_bytes(ser.Encoding.PEM))
        key_path = self._write(f"{stem}.key", key.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        return cert_path, key_path

    def client(self, sans: tuple[str, ...]) -> tuple[Path, Path]:
        """Certificate and key files for a client with these SANs (made once)."""
        if sans not in self._clients:
            self._clients[sans] = self._issue(f"client{len(self._clients)}", sans)
        return self._clients[sans]


class Tokens:
    """One RSA key; tokens signed with it for any payload, and its JWKS."""

    def __init__(self) -> None:
        from joserfc.jwk import RSAKey

        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.jwks = json.dumps({"keys": [self.key.as_dict(private=False)]})
        self._cache: dict[str, str] = {}

    def token(self, claims_json: str) -> str:
        """A signed token with these claims plus an expiry an hour ahead."""
        from joserfc import jwt

        if claims_json not in self._cache:
            body = {**json.loads(claims_json), "exp": int(time.time()) + 3600}
            self._cache[claims_json] = jwt.encode({"alg": "RS256", "kid": "k1"}, body, self.key)
        return self._cache[claims_json]


def mixer_policy_text(case: Case, probes: Iterable[Probe], jwks: str) -> str:
    """The golden input, plus a RequestAuthentication trusting the test key for every issuer
    the probes use (Istio's proxy gets the same key in its jwt_authn filter)."""
    text = case.input_yaml()
    issuers = sorted({json.loads(p.claims)["iss"] for p in probes if p.claims})
    if not issuers:
        return text
    authn = {
        "apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
        "metadata": {"name": "differential-test-jwt", "namespace": case.namespace},
        "spec": {"jwtRules": [{"issuer": iss, "jwks": jwks} for iss in issuers]},
    }
    return text.rstrip() + "\n---\n" + yaml.safe_dump(authn, sort_keys=False)


# --------------------------------------------------------------------------------------------
# Envoy: two listeners per case.


def _listener(name: str, port: int, pki: Pki, http_filters: list[Any],
              per_route: dict[str, Any] | None = None) -> dict[str, Any]:
    vhost: dict[str, Any] = {
        "name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "allowed"}}}],
    }
    if per_route:
        vhost["typed_per_filter_config"] = per_route
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": name, "codec_type": "HTTP1",
        # Istio's sidecar inbound defaults: BASE path normalization, XFF not replaced.
        "normalize_path": True, "use_remote_address": False,
        "route_config": {"name": name, "virtual_hosts": [vhost]},
        "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                 ".DownstreamTlsContext",
        "require_client_certificate": False,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(pki.server_cert)},
                                  "private_key": {"filename": str(pki.server_key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca_path)}},
        },
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        # The PROXY header lets a loopback client present any source and destination address;
        # tls_inspector records the SNI for RBAC's requested_server_name (Istio's inbound
        # listeners have it too).
        "listener_filters": [
            {"name": "envoy.filters.listener.proxy_protocol", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol"
                         ".v3.ProxyProtocol"}},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector"
                         ".v3.TlsInspector"}},
        ],
        "filter_chains": [{
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": hcm}],
        }],
    }


def method_filter() -> dict[str, Any]:
    """The Lua filter that sets ``:method`` from ``METHOD_HEADER`` (first on both listeners)."""
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": METHOD_LUA},
    }}


def jwt_authn_filter(jwks: str) -> dict[str, Any]:
    """Envoy's jwt_authn as Istio configures it: any valid token or none; payload to metadata."""
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3"
                 ".JwtAuthentication",
        # No issuer on the provider: each case's issuers are the policy's own strings.
        "providers": {"test": {"local_jwks": {"inline_string": jwks},
                               "payload_in_metadata": "payload", "forward": True}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "test"}, {"allow_missing": {}}]}}}],
    }}


def ext_authz_filters(cluster: str) -> list[dict[str, Any]]:
    """ext_authz to ``mixer authz`` as envoy-configs/authz.yaml sets it up (physical peer in
    ``envoy_mixer`` metadata, raw header lines, TLS session); errors answer 503 so they never
    pass for a denial."""
    header = "x-mixer-direct-remote-address"
    return [
        {"name": "envoy.filters.http.header_mutation", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
                     ".HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": header,
                           "value": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}},
        {"name": "envoy.filters.http.header_to_metadata", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3"
                     ".Config",
            "request_rules": [{"header": header, "remove": True, "on_header_present": {
                "metadata_namespace": "envoy_mixer", "key": "direct_remote_ip",
                "type": "STRING"}}]}},
        {"name": "envoy.filters.http.ext_authz", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s"},
            "failure_mode_allow": False, "status_on_error": {"code": 503},
            "include_peer_certificate": True, "include_tls_session": True,
            "encode_raw_headers": True, "metadata_context_namespaces": ["envoy_mixer"],
        }},
    ]


@dataclass(frozen=True, slots=True)
class CasePorts:
    """Where one case listens: the two listeners and the mixer's gRPC/admin ports."""

    istio: int
    mixer: int
    grpc: int
    admin: int


def envoy_config(admin_port: int, pki: Pki, tokens: Tokens,
                 cases: Sequence[tuple[Case, CasePorts]]) -> str:
    """One bootstrap with an istio/mixer listener pair per case."""
    listeners, clusters = [], {}
    for case, ports in cases:
        per_route = {"envoy.filters.http.ext_authz": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3"
                     ".ExtAuthzPerRoute",
            "check_settings": {"context_extensions": {**WORKLOAD_EXTENSIONS,
                                                      "namespace": case.namespace}},
        }}
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", case.name)
        listeners.append(_listener(f"istio_{name}", ports.istio, pki, [
            method_filter(), jwt_authn_filter(tokens.jwks), *case.rbac_filters()]))
        cluster = "authz_" + re.sub(r"[^A-Za-z0-9_.-]", "_", case.service)
        listeners.append(_listener(f"mixer_{name}", ports.mixer, pki,
                                   [method_filter(), *ext_authz_filters(cluster)],
                                   per_route))
        clusters[cluster] = {
            "name": cluster, "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                             ".HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": ports.grpc}}}}]}]},
        }
    return yaml.safe_dump({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": list(clusters.values())},
    }, sort_keys=False)


# --------------------------------------------------------------------------------------------
# The client: raw HTTP/1.1 over TLS after a PROXY header, one connection per key.


def _render(probe: Probe, tokens: Tokens) -> bytes:
    if probe.method in SENDABLE_METHODS:
        lines = [f"{probe.method} {probe.path} HTTP/1.1", f"Host: {probe.host}"]
    else:
        lines = [f"GET {probe.path} HTTP/1.1", f"Host: {probe.host}",
                 f"{METHOD_HEADER}: {probe.method}"]
    lines += [f"{name}: {value}" for name, value in probe.headers]
    if probe.claims is not None:
        lines.append(f"Authorization: Bearer {tokens.token(probe.claims)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Connection:
    def __init__(self, port: int, probe: Probe, pki: Pki) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(f"PROXY TCP4 {probe.src_ip} {probe.dst_ip} 40000 {probe.dst_port}\r\n"
                    .encode())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if probe.sans is not None:
            cert, key = pki.client(probe.sans)
            ctx.load_cert_chain(cert, key)
        self.sock = ctx.wrap_socket(raw, server_hostname=probe.sni)
        self.file = self.sock.makefile("rb")

    def exchange(self, data: bytes) -> tuple[int, bool]:
        """Send one request; (status, connection still usable)."""
        self.sock.sendall(data)
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and "close" in value.lower():
                close = True
        self.file.read(length)
        return status, not close

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def send_all(port: int, probes: Sequence[Probe], pki: Pki, tokens: Tokens) -> list[int]:
    """Statuses for ``probes`` sent to ``port``, reusing a connection while the key allows."""
    statuses, conn = [], None
    for probe in probes:
        for attempt in range(2):
            try:
                if conn is None:
                    conn = _Connection(port, probe, pki)
                status, reusable = conn.exchange(_render(probe, tokens))
            except (OSError, ValueError, IndexError):
                if conn is not None:
                    conn.close()
                conn = None
                if attempt:
                    status, reusable = -1, False  # no HTTP answer at all
                else:
                    continue
            break
        statuses.append(status)
        if not reusable and conn is not None:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return statuses


# --------------------------------------------------------------------------------------------
# Judging.


@dataclass(frozen=True, slots=True)
class Outcome:
    """One probe's two answers."""

    case: str
    probe: Probe
    istio: int
    mixer: int

    @property
    def judged(self) -> bool:
        """Istio's RBAC gave a verdict (200/403) or the two answers differ."""
        return self.istio in (200, 403) or self.istio != self.mixer

    @property
    def agreed(self) -> bool:
        """Same verdict (non-verdict answers that are equal count as not judged, not here)."""
        return self.istio == self.mixer


def run_probes(work: Sequence[tuple[Case, CasePorts, Sequence[Probe]]], pki: Pki,
               tokens: Tokens, threads: int = 16) -> list[Outcome]:
    """Send every case's probes to both its listeners; connections grouped by key."""
    jobs: list[tuple[Case, int, list[Probe], str]] = []
    for case, ports, probes in work:
        groups: dict[tuple[Any, ...], list[Probe]] = defaultdict(list)
        for probe in probes:
            groups[probe.connection_key].append(probe)
        for group in groups.values():
            jobs += [(case, ports.istio, group, "istio"), (case, ports.mixer, group, "mixer")]
    for _, _, probes in work:  # certificates are made here, not in the threads (file names)
        for probe in probes:
            if probe.sans is not None:
                pki.client(probe.sans)
    answers: dict[tuple[str, str, Probe], int] = {}
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda j: send_all(j[1], j[2], pki, tokens), jobs)
        for (case, _, group, side), statuses in zip(jobs, results, strict=True):
            for probe, status in zip(group, statuses, strict=True):
                answers[(case.name, side, probe)] = status
    return [Outcome(case.name, p, answers[(case.name, "istio", p)],
                    answers[(case.name, "mixer", p)])
            for case, _, probes in work for p in probes]


#: One line per probe tag (the part after "origin:"), for the mismatch report.
CLASS_DESCRIPTIONS = {
    "header-repeated-line-after": "header sent as two lines, the matching value second "
                                  "(Envoy's RBAC sees the lines joined with ',')",
    "header-repeated-line-before": "header sent as two lines, the matching value first",
    "header-same-line-twice": "the same header line sent twice",
    "header-empty-value": "header present with an empty value",
    "header-empty-line-and-value": "header sent as an empty line plus a value line",
    "header-name-case": "header name in upper case",
    "header-padded": "header value with surrounding spaces (Envoy trims them)",
    "header-comma-joined": "one header line '<value>,other'",
    "principal-scheme-upper-case": "client certificate with URI SAN SPIFFE://<value>",
    "namespace-dns-san": "DNS SAN cluster.local/ns/<value>/sa/default (Istio's regex sees it)",
    "service-account-dns-san": "DNS SAN spiffe://cluster.local/ns/<ns>/sa/<sa>",
    "host-trailing-dot": "authority <value>.",
    "subject-only": "client certificate without SANs (Envoy's principal is its subject)",
    "peer": "a peer spiffe://cluster.local/ns/foo/sa/x", "two-uri-sans": "two URI SANs",
    "dns-san-only": "a DNS-only certificate", "jwt": "a plain valid JWT",
    "addresses": "PROXY source 10.0.0.1, X-Forwarded-For 1.2.3.4, port 80",
    "path-dot-segments": "'/x/..' + path (Envoy normalizes it to the path)",
    "path-double-slash": "'/' + path (no slash merging in Istio's default normalization)",
    "header": "header with one line",
    "request-principal": "JWT iss/sub from the policy's requestPrincipal split at its last '/' "
                         "(no '/': sub is empty)",
    "request-principal-with-subject": "JWT whose sub is appended to the policy value",
    "request-principal-split-first-slash": "JWT iss/sub split at the first '/' of the value",
    "request-principal-url-issuer": "JWT with a URL issuer containing '/'",
    "principal": "client certificate with one URI SAN spiffe://<value>",
    "principal-second-uri-san": "client certificate whose second URI SAN is spiffe://<value>",
    "principal-dns-san-only": "client certificate with only a DNS SAN <value>",
    "principal-uri-without-spiffe": "client certificate with URI SAN <value> (no spiffe://)",
    "namespace": "peer spiffe://cluster.local/ns/<value>/sa/default",
    "namespace-no-sa": "peer spiffe://cluster.local/ns/<value> (no /sa/)",
    "namespace-deeper-path": "peer spiffe://cluster.local/x/ns/<value>/sa/default",
    "namespace-second-uri-san": "namespace in the certificate's second URI SAN",
    "service-account": "peer spiffe://cluster.local/ns/<ns>/sa/<sa>",
    "service-account-extra-segment": "peer .../sa/<sa>/extra (Istio's regex allows it)",
    "service-account-middle-segment": "peer .../ns/<ns>/x/sa/<sa> (Istio's regex allows it)",
    "service-account-other-trust-domain": "peer spiffe://other.td/ns/<ns>/sa/<sa>",
    "service-account-other-namespace": "peer in namespace <ns>x",
    "service-account-prefix": "peer .../sa/x<sa>",
    "trust-domain": "peer spiffe://<td>/ns/foo/sa/default",
    "trust-domain-case": "peer trust domain in upper case",
    "principal-trust-domain": "the policy's principal with its trust domain replaced by a "
                              "bundle member or an outsider (other-td)",
    "sni": "TLS SNI equal to the value",
    "sni-upper-case": "TLS SNI in upper case",
    "source-ip": "PROXY-protocol peer address in the block",
    "source-ip-only-in-xff": "peer 127.0.0.1, block address only in X-Forwarded-For",
    "remote-ip-xff": "block address as the right-most X-Forwarded-For entry",
    "remote-ip-peer-without-xff": "block address as the peer, no X-Forwarded-For",
    "remote-ip-left-of-xff": "block address left of another X-Forwarded-For entry",
    "remote-ip-xff-lines": "X-Forwarded-For sent as two header lines",
    "remote-ip-peer-with-garbage-xff": "block address as the peer, X-Forwarded-For not an IP "
                                       "(Envoy then falls back to the peer)",
    "remote-ip-xff-garbage-last": "X-Forwarded-For '<block address>, not-an-ip'",
    "path-percent-encoded": "first letter of the path percent-encoded (an unreserved char)",
    "destination-ip": "PROXY-protocol destination address",
    "port": "PROXY-protocol destination port",
    "path": "request path", "path-trailing-slash": "path plus a trailing '/'",
    "path-query": "path plus '?q=1'", "path-case": "path in upper case",
    "path-without-leading-slash": "policy path without a leading '/', requested as '/'+path",
    "path-template": "path template instantiated", "path-template-more-segments":
        "template with an extra segment for {*}",
    "path-template-empty-segment": "template with empty segments",
    "host": "authority equal to the value", "host-with-port": "authority <value>:80",
    "host-case": "authority with swapped case",
    "method": "method equal to the value", "method-lower-case": "method in lower case",
    "claim": "JWT claim as a string", "claim-list": "JWT claim as a list",
    "claim-space-separated": "JWT claim as a space-separated string",
}


def class_of(outcome: Outcome) -> str:
    """The mismatch class: what the probe varied (origin of the value and its form)."""
    return outcome.probe.tag


def describe_class(tag: str) -> str:
    """One line for a class tag."""
    origin, _, form = tag.partition(":")
    if origin == "base":
        return f"every field of one rule at an accepted value (fields: {form})"
    if form.startswith("principal-trust-domain-"):
        form = "principal-trust-domain"
    desc = CLASS_DESCRIPTIONS.get(form, form)
    origins = {"value": "a policy value", "notvalue": "a not-value", "near-miss": "a near miss",
               "absent": "field absent", "empty": "empty", "base": "base request",
               "nested": "special form", "common": "a probe every case gets",
               "bundle": "a trust domain of the case's bundle"}
    return f"{desc} ({origins.get(origin, origin)})"
