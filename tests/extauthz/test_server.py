"""The servicer through a real in-process gRPC server and stub."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import CollectorRegistry

from envoy_mixer.runtime.service import RunningService, start
from envoy_mixer.runtime.settings import ServerSettings
from extauthz.app import build_service

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: teapot
  namespace: foo
  annotations:
    authz.envoy-mixer.io/deny-status: "418"
    authz.envoy-mixer.io/deny-body: "short and stout"
    authz.envoy-mixer.io/deny-headers: '{"x-why": "teapot"}'
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/tea"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/dry"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins-only, namespace: bar}
spec:
  rules: [{from: [{source: {namespaces: ["admin"]}}]}]
"""


def jwt_policy(signer: Any) -> str:
    """RequestAuthentication with claim/payload forwarding for namespace foo."""
    return f"""
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: {signer.issuer}
    jwks: {json.dumps(signer.jwks)}
    outputClaimToHeaders: [{{header: x-user, claim: sub}}, {{header: X-Role, claim: role}}]
"""


class Running:
    """A started service plus a stub."""

    def __init__(self, running: RunningService, stub: Any, registry: CollectorRegistry,
                 policy: Path) -> None:
        self.running = running
        self.stub = stub
        self.registry = registry
        self.policy = policy

    def metric(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when absent)."""
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def service(tmp_path: Path, signer: Any) -> AsyncIterator[Running]:
    """The authz service on free ports with POLICY + a JWT rule loaded."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + jwt_policy(signer))
    registry = CollectorRegistry()
    svc = build_service(policy, registry=registry, reload_interval=0.05)
    running = await start(svc, ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}")
    try:
        yield Running(running, external_auth_pb2_grpc.AuthorizationStub(channel), registry,
                      policy)
    finally:
        await channel.close()
        await running.stop(0)


def check_request(path: str, *, headers: dict[str, str] | None = None, method: str = "GET",
                  ns: str = "foo") -> external_auth_pb2.CheckRequest:
    """A CheckRequest like Envoy's, with the workload namespace as a context extension."""
    ctx = attribute_context_pb2.AttributeContext
    attrs = ctx(
        source=ctx.Peer(principal="spiffe://cluster.local/ns/default/sa/sleep"),
        request=ctx.Request(http=ctx.HttpRequest(
            id="req-1", method=method, path=path, host="httpbin.foo", headers=headers or {})),
        context_extensions={"namespace": ns, "label.app": "httpbin"},
    )
    attrs.source.address.socket_address.address = "10.0.0.7"
    attrs.source.address.socket_address.port_value = 5555
    return external_auth_pb2.CheckRequest(attributes=attrs)


async def test_allow_and_default_deny_body(service: Running) -> None:
    """Allowed -> OK status; denied -> 403 'RBAC: access denied' with code PERMISSION_DENIED."""
    ok = await service.stub.Check(check_request("/get"))
    assert ok.status.code == 0 and not ok.HasField("denied_response")
    denied = await service.stub.Check(check_request("/admin/x?y=1"))
    assert denied.status.code == 7
    assert denied.denied_response.status.code == 403
    assert denied.denied_response.body == "RBAC: access denied"
    assert service.metric("mixer_authz_decisions_total", result="deny") == 1
    assert service.metric("mixer_authz_policy_decisions_total", policy="foo/deny-admin",
                          result="deny") == 1


async def test_custom_deny_response(service: Running) -> None:
    """The opt-in annotations shape the denied response."""
    resp = await service.stub.Check(check_request("/tea"))
    assert resp.denied_response.status.code == 418
    assert resp.denied_response.body == "short and stout"
    headers = {o.header.key: o.header.value for o in resp.denied_response.headers}
    assert headers["x-why"] == "teapot"


async def test_jwt_headers_and_401(service: Running, signer: Any) -> None:
    """A valid JWT adds claim headers and strips the token; an invalid one gets 401."""
    good = await service.stub.Check(check_request(
        "/get", headers={"authorization": f"Bearer {signer.token()}"}))
    added = {o.header.key: o.header.value for o in good.ok_response.headers}
    assert added == {"x-user": "alice"}
    assert list(good.ok_response.headers_to_remove) == ["authorization", "x-role"]
    bad = await service.stub.Check(check_request(
        "/get", headers={"authorization": "Bearer a.b.c"}))
    assert (bad.status.code, bad.denied_response.status.code) == (16, 401)
    assert service.metric("mixer_authz_decisions_total", result="unauthenticated") == 1


async def test_output_headers_are_stripped_token_or_not(service: Running, signer: Any) -> None:
    """Every output header is removed with no token; a set one overwrites, an unset one goes."""
    forged = {"x-user": "root", "x-role": "admin"}
    plain = await service.stub.Check(check_request("/get", headers=forged))
    assert plain.status.code == 0
    assert sorted(plain.ok_response.headers_to_remove) == ["x-role", "x-user"]
    assert not plain.ok_response.headers
    with_role = await service.stub.Check(check_request("/get", headers={
        **forged, "authorization": f"Bearer {signer.token(role='viewer')}"}))
    options = {o.header.key: (o.header.value, o.append_action)
               for o in with_role.ok_response.headers}
    from envoy.config.core.v3 import base_pb2

    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert options == {"x-user": ("alice", overwrite), "x-role": ("viewer", overwrite)}
    assert list(with_role.ok_response.headers_to_remove) == ["authorization"]
    other_ns = await service.stub.Check(check_request("/get", headers=forged, ns="default"))
    assert not other_ns.HasField("ok_response")  # no RequestAuthentication there: untouched


async def test_oversized_output_header_is_dropped_and_counted(
        tmp_path: Path, signer: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An output header that would break Envoy's header limit is left out, logged and counted."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(jwt_policy(signer))
    registry = CollectorRegistry()
    running = await start(build_service(policy, registry=registry, max_request_headers_kb=4),
                          ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    caplog.set_level(logging.WARNING, logger="extauthz.decisions")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            # About 2.8 KB of request headers: the 11-byte x-user fits in 4 KiB, x-role not.
            token = signer.token(role="r" * 1700)
            resp = await stub.Check(check_request(
                "/get", headers={"authorization": f"Bearer {token}", "x-role": "forged"}))
        assert resp.status.code == 0
        assert {o.header.key: o.header.value for o in resp.ok_response.headers} == {
            "x-user": "alice"}
        assert sorted(resp.ok_response.headers_to_remove) == ["authorization", "x-role"]
        assert registry.get_sample_value("mixer_authz_output_headers_dropped_total") == 1
        events = {r.getMessage(): r.mixer_fields for r in caplog.records}  # type: ignore[attr-defined]
        assert events["authz_output_header_dropped"]["header"] == "x-role"
        assert events["authz_output_header_dropped"]["bytes"] == len("x-role") + 1700
    finally:
        await running.stop(0)


async def test_forged_identity_headers_change_no_decision(service: Running) -> None:
    """Peer-metadata and XFCC headers claiming another namespace never make a principal."""
    import base64

    claim = base64.b64encode(json.dumps({"namespace": "admin", "name": "x"}).encode()).decode()
    forged = {"x-mixer-peer-metadata": claim, "x-mixer-peer-metadata-id": "sidecar~admin",
              "x-forwarded-client-cert": "By=x;URI=spiffe://cluster.local/ns/admin/sa/x"}
    plain = await service.stub.Check(check_request("/get", ns="bar"))
    spoofed = await service.stub.Check(check_request("/get", ns="bar", headers=forged))
    assert plain.status.code == spoofed.status.code == 7
    assert spoofed.denied_response.status.code == 403


async def test_dry_run_and_audit_logged_and_counted(service: Running,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Dry-run deny allows but logs/counts; audit logs/counts; deny logs one line with policy."""
    caplog.set_level(logging.INFO, logger="extauthz.decisions")
    dry = await service.stub.Check(check_request("/dry"))
    assert dry.status.code == 0
    await service.stub.Check(check_request("/audited"))
    await service.stub.Check(check_request("/admin"))
    events = {r.getMessage(): r.mixer_fields for r in caplog.records}  # type: ignore[attr-defined]
    assert events["authz_dry_run_denied"]["rule"] == "ns[foo]-policy[dry]-rule[0]"
    assert events["authz_audit"]["policy"] == "foo/audit"
    assert events["authz_denied"]["rule"] == "ns[foo]-policy[deny-admin]-rule[0]"
    assert events["authz_denied"]["path"] == "/admin"
    assert events["authz_denied"]["allow_policies"] is None
    assert service.metric("mixer_authz_decisions_total", result="dry_run_deny") == 1
    assert service.metric("mixer_authz_decisions_total", result="audit") == 1


async def test_empty_request_is_answered(service: Running) -> None:
    """A CheckRequest with nothing in it gets a decision, not a crash."""
    resp = await service.stub.Check(external_auth_pb2.CheckRequest())
    assert resp.status.code == 0  # default namespace has no policies -> allow


async def test_reload_swaps_and_bad_file_keeps_old(service: Running) -> None:
    """A valid edit takes effect; a broken edit keeps the previous policies and counts an error."""
    service.policy.write_text(POLICY.replace("/admin*", "/secret"))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await service.stub.Check(check_request("/secret"))).status.code == 7:
            break
    assert (await service.stub.Check(check_request("/admin"))).status.code == 0
    service.policy.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                              "metadata: {name: x}\nspec: {action: NOPE}\n")
    for _ in range(100):
        await asyncio.sleep(0.05)
        if service.metric("mixer_config_loads_total", service="authz", result="error"):
            break
    assert service.metric("mixer_config_loads_total", service="authz", result="error") == 1
    assert (await service.stub.Check(check_request("/secret"))).status.code == 7
    err = service.running.service.reloader.last_error  # type: ignore[union-attr]
    assert (err.file, err.line, err.field) == ("policy.yaml", 4, "spec.action")


async def test_not_loaded_fails_the_rpc_with_unavailable(tmp_path: Path) -> None:
    """Before any good load, Check fails with gRPC UNAVAILABLE, counted as reason no_policy."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: AuthorizationPolicy\n")
    registry = CollectorRegistry()
    running = await start(build_service(bad, registry=registry),
                          ServerSettings("authz", "127.0.0.1:0", "127.0.0.1:0"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Check(check_request("/"))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "no policy loaded"
        assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "no_policy"}) == 1
        assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "internal"}) == 0
        assert registry.get_sample_value("mixer_authz_decisions_total", {"result": "error"}) == 1
    finally:
        await running.stop(0)


async def test_internal_error_fails_the_rpc_with_internal(tmp_path: Path) -> None:
    """An unexpected exception during Check fails with gRPC INTERNAL, counted as internal."""
    from envoy_mixer.common.snapshot import Snapshot
    from extauthz.metrics import AuthzMetrics
    from extauthz.server import AuthorizationServicer, add_to_server

    class Broken:
        """A policy set whose lookup raises, standing in for any bug behind Check."""

        def view(self, context_extensions: object) -> object:
            raise RuntimeError("boom")

    snapshot: Snapshot[Any] = Snapshot()
    snapshot.set(Broken())
    registry = CollectorRegistry()
    servicer = AuthorizationServicer(snapshot, AuthzMetrics(registry))
    server = grpc.aio.server()
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Check(check_request("/"))
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert registry.get_sample_value("mixer_authz_errors_total", {"reason": "internal"}) == 1
    finally:
        await server.stop(0)


def test_to_domain_raw_header_map_query_and_identity() -> None:
    """encode_raw_headers entries are merged, the query is split off, peers are mapped."""
    from envoy.config.core.v3 import base_pb2

    from extauthz.server import to_domain

    ctx = attribute_context_pb2.AttributeContext
    http = ctx.HttpRequest(method="POST", path="/a/b?x=1#frag", host="H.example")
    http.header_map.headers.extend([
        base_pb2.HeaderValue(key="X-Multi", raw_value=b"1"),
        base_pb2.HeaderValue(key="x-multi", raw_value=b"2"),
    ])
    attrs = ctx(request=ctx.Request(http=http), source=ctx.Peer(principal="spiffe://td/ns/a/sa/b"),
                tls_session=ctx.TLSSession(sni="sni.example"))
    attrs.destination.address.socket_address.address = "10.1.1.1"
    attrs.destination.address.socket_address.port_value = 8443
    req = to_domain(external_auth_pb2.CheckRequest(attributes=attrs))
    assert (req.method, req.host, req.path, req.query) == ("POST", "H.example", "/a/b", "x=1")
    assert req.headers["x-multi"] == "1,2"
    assert (req.source_principal, req.sni) == ("spiffe://td/ns/a/sa/b", "sni.example")
    assert (req.destination_ip, req.destination_port) == ("10.1.1.1", 8443)


def test_to_domain_keeps_repeated_header_lines_apart() -> None:
    """Raw header entries give both the joined value and the separate lines."""
    from envoy.config.core.v3 import base_pb2

    from extauthz.server import to_domain

    ctx = attribute_context_pb2.AttributeContext
    http = ctx.HttpRequest(method="GET", path="/")
    http.header_map.headers.extend([
        base_pb2.HeaderValue(key="x-role", raw_value=b"admin"),
        base_pb2.HeaderValue(key="x-role", raw_value=b"guest"),
        base_pb2.HeaderValue(key="x-empty"),
    ])
    req = to_domain(external_auth_pb2.CheckRequest(attributes=ctx(request=ctx.Request(http=http))))
    assert req.headers["x-role"] == "admin,guest"
    assert req.header_lines["x-role"] == ("admin", "guest")
    assert req.headers["x-empty"] == ""
    assert "x-empty" not in req.header_lines


def test_to_domain_reads_the_physical_peer_from_our_metadata() -> None:
    """The direct peer comes from the envoy_mixer metadata namespace, never from a header."""
    from extauthz.server import DIRECT_REMOTE_IP_KEY, METADATA_NAMESPACE, to_domain

    ctx = attribute_context_pb2.AttributeContext
    attrs = ctx(request=ctx.Request(http=ctx.HttpRequest(
        method="GET", path="/", headers={"x-mixer-direct-peer": "6.6.6.6"})))
    attrs.source.address.socket_address.address = "9.9.9.9"
    plain = to_domain(external_auth_pb2.CheckRequest(attributes=attrs))
    assert (plain.source_ip, plain.direct_source_ip) == ("9.9.9.9", None)
    attrs.metadata_context.filter_metadata[METADATA_NAMESPACE].update(
        {DIRECT_REMOTE_IP_KEY: "10.0.0.7"})
    proxied = to_domain(external_auth_pb2.CheckRequest(attributes=attrs))
    assert (proxied.source_ip, proxied.direct_source_ip) == ("9.9.9.9", "10.0.0.7")


def test_to_domain_parses_every_san_of_the_peer_certificate(h: Any) -> None:
    """The URL-encoded PEM peer certificate yields all URI SANs, DNS SANs and the subject."""
    from urllib.parse import quote

    from extauthz.peercert import CertificateCache
    from extauthz.server import to_domain

    pem = h.certificate(uris=["spiffe://td/ns/a/sa/one", "spiffe://td/ns/a/sa/two"],
                           dns=["web.example"], common_name="web")
    ctx = attribute_context_pb2.AttributeContext
    attrs = ctx(request=ctx.Request(http=ctx.HttpRequest(method="GET", path="/")),
                source=ctx.Peer(principal="spiffe://td/ns/a/sa/one", certificate=quote(pem)))
    cache = CertificateCache(size=1)
    req = to_domain(external_auth_pb2.CheckRequest(attributes=attrs), cache)
    assert req.peer_uri_sans == ("spiffe://td/ns/a/sa/one", "spiffe://td/ns/a/sa/two")
    assert req.peer_dns_sans == ("web.example",)
    assert req.peer_subject == "CN=web"
    assert req.peer_names() == (*req.peer_uri_sans, "web.example", "CN=web")
    assert len(cache) == 1


def test_certificate_cache_is_a_bounded_lru(h: Any) -> None:
    """Repeated certificates are parsed once; the least recently used one is evicted."""
    from urllib.parse import quote

    from extauthz.peercert import NO_NAMES, CertificateCache

    a = quote(h.certificate(uris=["spiffe://td/a"]))
    b = quote(h.certificate(uris=["spiffe://td/b"]))
    cache = CertificateCache(size=1)
    first = cache.names(a)
    assert cache.names(a) is first
    assert cache.names(b).uri_sans == ("spiffe://td/b",)
    assert len(cache) == 1
    assert cache.names(a) is not first  # evicted, parsed again
    assert cache.names("not a certificate") is NO_NAMES



def test_to_domain_passes_other_filters_metadata() -> None:
    """Dynamic metadata of other filter namespaces reaches the engine as plain values."""
    from extauthz.server import to_domain

    ctx = attribute_context_pb2.AttributeContext
    attrs = ctx(request=ctx.Request(http=ctx.HttpRequest(method="GET", path="/")))
    attrs.metadata_context.filter_metadata["envoy.filters.a.b"].update(
        {"c": "gold", "tags": ["x", "vip"]})
    req = to_domain(external_auth_pb2.CheckRequest(attributes=attrs))
    assert req.metadata == {"envoy.filters.a.b": {"c": "gold", "tags": ["x", "vip"]}}
    plain = to_domain(external_auth_pb2.CheckRequest(attributes=ctx()))
    assert dict(plain.metadata) == {}
