"""Thin ``envoy.service.auth.v3.Authorization`` servicer: CheckRequest <-> domain.

Everything interesting happens in ``engine.decide``; this module maps protobuf to
``AuthzRequest``, runs authentication (async only for JWKS fetches) and the engine, logs and
counts the decision, and maps it back: allow -> ``OkHttpResponse`` with the JWT output headers;
deny -> ``DeniedHttpResponse`` (403 ``RBAC: access denied`` unless a policy customizes it);
invalid token -> 401. Before the first good policy load, or on an internal error, the answer is
a non-OK status, which Envoy turns into a deny because our configs set
``failure_mode_allow: false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from envoy_mixer.logs import log_event
from envoy_mixer.snapshot import NotLoadedError, Snapshot
from extauthz.engine import Decision, decide
from extauthz.jwt import NO_TOKEN, Authenticator
from extauthz.metrics import AuthzMetrics
from extauthz.policy import PolicySet
from extauthz.request import AuthzRequest

SERVICE_NAME = "envoy.service.auth.v3.Authorization"

_log = logging.getLogger("extauthz.decisions")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def to_domain(check: external_auth_pb2.CheckRequest) -> AuthzRequest:
    """Map a CheckRequest to the domain request (missing fields become absent, never errors)."""
    attrs = check.attributes
    http = attrs.request.http
    headers: dict[str, str] = dict(http.headers)
    if not headers and len(http.header_map.headers):
        # encode_raw_headers: repeated raw entries; merge duplicates like Envoy does.
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
            key = entry.key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    source = attrs.source.address.socket_address
    destination = attrs.destination.address.socket_address
    return AuthzRequest.build(
        method=http.method or headers.get(":method", ""),
        host=http.host or headers.get(":authority", ""),
        path=http.path or headers.get(":path", "/"),
        headers=headers,
        source_ip=source.address or None,
        source_principal=attrs.source.principal or None,
        destination_ip=destination.address or None,
        destination_port=destination.port_value if destination.address else None,
        sni=attrs.tls_session.sni or None,
        context_extensions=dict(attrs.context_extensions),
        request_id=http.id,
    )


def _header_options(pairs: Sequence[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v),
                                   append_action=_OVERWRITE)
        for k, v in pairs
    ]


def to_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    """Map a decision to the CheckResponse Envoy understands."""
    if decision.allowed:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_header_options(decision.headers_to_add),
                headers_to_remove=list(decision.headers_to_remove),
                query_parameters_to_remove=list(decision.params_to_remove),
            ),
        )
    code = code_pb2.UNAUTHENTICATED if decision.status == 401 else code_pb2.PERMISSION_DENIED
    headers = [("content-type", "text/plain"), *decision.response_headers]
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=decision.reason),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=_header_options(headers),
            body=decision.body,
        ),
    )


def error_response(message: str) -> external_auth_pb2.CheckResponse:
    """A non-OK answer without a decision (no policy loaded, internal error)."""
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message),
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check`` over the current policy snapshot."""

    def __init__(
        self,
        snapshot: Snapshot[PolicySet],
        metrics: AuthzMetrics,
        authenticator: Authenticator | None = None,
        *,
        trusted_proxies: int = 0,
    ) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        self.authenticator = authenticator or Authenticator()
        self.trusted_proxies = trusted_proxies

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        """Authorize one request."""
        started = time.perf_counter()
        try:
            return await self._check(request)
        finally:
            self.metrics.check_seconds.observe(time.perf_counter() - started)

    async def _check(
        self, check: external_auth_pb2.CheckRequest
    ) -> external_auth_pb2.CheckResponse:
        try:
            policies = self.snapshot.get()
        except NotLoadedError:
            self.metrics.result["error"].inc()
            log_event(_log, "authz_error", logging.ERROR, error="no policy loaded")
            return error_response("no policy loaded")
        try:
            req = to_domain(check)
            view = policies.view(req.context_extensions)
            authn = (await self.authenticator.authenticate(view.jwt_rules, req)
                     if view.jwt_rules else NO_TOKEN)
            decision = decide(policies, view, req, authn, trusted_proxies=self.trusted_proxies)
        except Exception as exc:
            # Not silent: logged with the traceback and counted; Envoy denies (fail closed).
            self.metrics.result["error"].inc()
            _log.exception("authz_error", extra={"mixer_fields": {"error": repr(exc)}})
            return error_response("internal error")
        self.record(decision, req)
        return to_response(decision)

    def record(self, decision: Decision, req: AuthzRequest) -> None:
        """Count and log one decision (deny, dry-run deny, audit and 401 are logged)."""
        m = self.metrics
        m.result[decision.verdict].inc()
        if decision.decided_by is not None:
            m.policy_decisions.labels(decision.decided_by.policy, decision.verdict).inc()
        elif decision.verdict == "deny":
            m.policy_decisions.labels("-", "deny").inc()
        if decision.verdict != "allow":
            log_event(
                _log, "authz_denied" if decision.verdict == "deny" else "authz_unauthenticated",
                logging.INFO, status=decision.status, reason=decision.reason,
                policy=decision.decided_by.policy if decision.decided_by else None,
                rule=decision.decided_by.rule_id if decision.decided_by else None,
                **_request_fields(req, decision),
            )
        if decision.dry_run_denied:
            m.result["dry_run_deny"].inc()
            by = decision.dry_run_by
            if by is not None:
                m.policy_decisions.labels(by.policy, "dry_run_deny").inc()
            log_event(
                _log, "authz_dry_run_denied", logging.INFO, enforced=decision.verdict,
                reason=decision.dry_run_reason, policy=by.policy if by else None,
                rule=by.rule_id if by else None, **_request_fields(req, decision),
            )
        if decision.audit is not None:
            m.result["audit"].inc()
            m.policy_decisions.labels(decision.audit.policy, "audit").inc()
            log_event(
                _log, "authz_audit", logging.INFO, enforced=decision.verdict,
                policy=decision.audit.policy, rule=decision.audit.rule_id,
                **_request_fields(req, decision),
            )


def _request_fields(req: AuthzRequest, decision: Decision) -> dict[str, Any]:
    return {
        "request_id": req.request_id, "method": req.method, "host": req.host, "path": req.path,
        "source_ip": req.source_ip, "source_principal": req.source_principal,
        "request_principal": decision.principal,
        "namespace": req.context_extensions.get("namespace"),
    }


def add_to_server(servicer: AuthorizationServicer, server: Any) -> None:
    """Register the servicer on a ``grpc.aio.Server``."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
