"""Thin ``envoy.service.auth.v3.Authorization`` servicer: CheckRequest <-> domain.

Everything interesting happens in ``engine.decide``; this module maps protobuf to
``AuthzRequest``, runs authentication (async only for JWKS fetches) and the engine, logs and
counts the decision, and maps it back: allow -> ``OkHttpResponse`` with the JWT output headers
set and every other output header of the workload's RequestAuthentications removed (see
``extauthz.output_headers``); deny -> ``DeniedHttpResponse`` (403 ``RBAC: access denied``
unless a policy customizes it); invalid token -> 401.

Without a decision the RPC itself fails, so Envoy's ``failure_mode_allow`` (and
``status_on_error``) decide what the client gets: before the first good policy load the status
is UNAVAILABLE (``mixer_authz_errors_total{reason="no_policy"}``), on an unexpected error
INTERNAL (``reason="internal"``, logged with its traceback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from envoy_mixer.common.logs import log_event
from envoy_mixer.common.snapshot import NotLoadedError, Snapshot
from extauthz.engine import Decision, decide
from extauthz.jwt import NO_TOKEN, Authenticator
from extauthz.metrics import AuthzMetrics
from extauthz.output_headers import (
    DEFAULT_MAX_HEADERS_COUNT,
    DEFAULT_MAX_REQUEST_HEADERS_KB,
    OutputHeaderNames,
    fit,
    header_bytes,
    strip_list,
)
from extauthz.peercert import NO_NAMES, CertificateCache
from extauthz.policy import PolicySet, WorkloadView
from extauthz.request import AuthzRequest, merge_header_lines

_NO_LINES: Mapping[str, tuple[str, ...]] = {}
_NO_METADATA: Mapping[str, Mapping[str, object]] = {}

SERVICE_NAME = "envoy.service.auth.v3.Authorization"

_log = logging.getLogger("extauthz.decisions")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


#: Where our Envoy configs put the physical peer address (``metadata_context_namespaces``).
#: Dynamic metadata, unlike a header, cannot be sent by a client: a config without the
#: filters that set it simply sends none, and ``source.address`` is used.
METADATA_NAMESPACE = "envoy_mixer"
DIRECT_REMOTE_IP_KEY = "direct_remote_ip"

_CERTIFICATES = CertificateCache()


def to_domain(check: external_auth_pb2.CheckRequest,
              certificates: CertificateCache | None = None) -> AuthzRequest:
    """Map a CheckRequest to the domain request (missing fields become absent, never errors).

    ``headers`` and ``context_extensions`` are the CheckRequest's own (read-only used) maps, not
    copies: Envoy already lower-cases header names, and copying them is most of this function's
    cost. They live as long as the call. With ``encode_raw_headers`` (our configs set it) the
    lines of a repeated header arrive apart and are kept apart for the header matchers. The
    peer certificate, when sent, is parsed (cached) into its SANs and subject.
    """
    attrs = check.attributes
    http = attrs.request.http
    headers: Mapping[str, str] = http.headers
    lines: Mapping[str, tuple[str, ...]] = _NO_LINES
    if not headers and len(http.header_map.headers):
        headers, lines = merge_header_lines(
            (entry.key, entry.raw_value.decode("utf-8", "replace") if entry.raw_value
             else entry.value)
            for entry in http.header_map.headers
        )
    # Every nested protobuf field read builds a wrapper object: read each message once.
    source = attrs.source
    certificate = source.certificate
    if certificate:
        cache = _CERTIFICATES if certificates is None else certificates
        names = cache.names(certificate)
    else:
        names = NO_NAMES
    direct_ip: str | None = None
    metadata: Mapping[str, Mapping[str, object]] = _NO_METADATA
    filter_metadata = attrs.metadata_context.filter_metadata
    if filter_metadata:
        ours = filter_metadata.get(METADATA_NAMESPACE)
        if ours is not None and DIRECT_REMOTE_IP_KEY in ours.fields:
            direct_ip = ours.fields[DIRECT_REMOTE_IP_KEY].string_value or None
        # Other filters' metadata (experimental.envoy.filters.* conditions): converted only
        # when a config sends some, so the usual request pays nothing.
        if len(filter_metadata) > (ours is not None):
            metadata = {ns: json_format.MessageToDict(struct)
                        for ns, struct in filter_metadata.items() if ns != METADATA_NAMESPACE}
    source_address = source.address.socket_address.address
    destination = attrs.destination.address.socket_address
    destination_address = destination.address
    raw_path = http.path or headers.get(":path", "/")
    if "?" in raw_path or "#" in raw_path:
        path, _, query = raw_path.partition("?")
        if "#" in raw_path:
            path, query = path.partition("#")[0], query.partition("#")[0]
    else:
        path, query = raw_path, ""
    return AuthzRequest(
        http.method or headers.get(":method", ""),
        http.host or headers.get(":authority", ""),
        path or "/",
        query,
        headers,
        source_address or None,
        source.principal or None,
        destination_address or None,
        destination.port_value if destination_address else None,
        attrs.tls_session.sni or None,
        attrs.context_extensions,
        http.id,
        lines,
        direct_ip,
        names.uri_sans,
        names.dns_sans,
        names.subject,
        metadata,
    )


def _header_options(pairs: Sequence[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v),
                                   append_action=_OVERWRITE)
        for k, v in pairs
    ]


_PLAIN_ALLOW = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


def to_response(decision: Decision, strip: Sequence[str] = ()) -> external_auth_pb2.CheckResponse:
    """Map a decision to the CheckResponse Envoy understands.

    ``strip`` names the workload's JWT output headers: on an allow, each one the decision does
    not set is removed from the request (a client-sent value must never reach the app).
    """
    if decision.allowed:
        if not (decision.headers_to_add or decision.headers_to_remove
                or decision.params_to_remove or strip):
            return _PLAIN_ALLOW
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_header_options(decision.headers_to_add),
                headers_to_remove=list(strip_list(strip, decision.headers_to_add,
                                                  decision.headers_to_remove)),
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


class _ResponseCache:
    """Responses for the engine's shared (memoized) decisions, built once per decision object.

    Keyed by the decision and the workload's output-header tuple (both interned: the engine
    memoizes decisions, ``OutputHeaderNames`` the tuples). Responses are never mutated after
    creation, so gRPC can serialize the same one every time.
    """

    MAX = 8192

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], tuple[Decision, Sequence[str],
                                                   external_auth_pb2.CheckResponse]] = {}

    def get(self, decision: Decision, strip: Sequence[str] = ()) -> external_auth_pb2.CheckResponse:
        key = (id(decision), id(strip))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is decision and entry[1] is strip:
            return entry[2]
        response = to_response(decision, strip)
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        # Keeping both objects in the entry pins their ids, so a reused id can never alias.
        self._entries[key] = (decision, strip, response)
        return response


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """``Check`` over the current policy snapshot."""

    def __init__(
        self,
        snapshot: Snapshot[PolicySet],
        metrics: AuthzMetrics,
        authenticator: Authenticator | None = None,
        *,
        trusted_proxies: int = 0,
        max_request_headers_kb: int = DEFAULT_MAX_REQUEST_HEADERS_KB,
        max_headers_count: int = DEFAULT_MAX_HEADERS_COUNT,
    ) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        self.authenticator = authenticator or Authenticator()
        self.trusted_proxies = trusted_proxies
        #: Envoy's request header limits, which the JWT output headers must stay within.
        self.max_request_headers_kb = max_request_headers_kb
        self.max_headers_count = max_headers_count
        self._responses = _ResponseCache()
        self._certificates = CertificateCache()
        self._output_names = OutputHeaderNames()

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        """Authorize one request; without a decision, fail the RPC (Envoy's failure mode)."""
        started = time.perf_counter()
        metrics = self.metrics
        try:
            policies = self.snapshot.get()
        except NotLoadedError:
            metrics.count_error("no_policy")
            metrics.observe(time.perf_counter() - started)
            log_event(_log, "authz_error", logging.ERROR, reason="no_policy",
                      error="no policy loaded")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no policy loaded")
            raise  # unreachable: abort raises
        try:
            req = to_domain(request, self._certificates)
            view = policies.view(req.context_extensions)
            authn = (await self.authenticator.authenticate(view.jwt_rules, req)
                     if view.jwt_rules else NO_TOKEN)
            decision = decide(policies, view, req, authn, trusted_proxies=self.trusted_proxies)
            self.record(decision, req, view)
            strip = self._output_names.get(view.jwt_rules)
            # Only the engine's shared decisions are worth caching; per-request ones (JWT
            # headers, audit, dry-run details) would just churn the cache.
            if authn is NO_TOKEN and decision.audit is None and not view.has_dry_run:
                response = self._responses.get(decision, strip)
            else:
                if decision.headers_to_add:
                    decision = self._bounded(decision, req)
                response = to_response(decision, strip)
        except Exception as exc:
            # Not silent: logged with the traceback and counted; Envoy's failure mode decides.
            metrics.count_error("internal")
            _log.exception("authz_error", extra={"mixer_fields": {"reason": "internal",
                                                                  "error": repr(exc)}})
            metrics.observe(time.perf_counter() - started)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise  # unreachable: abort raises
        metrics.observe(time.perf_counter() - started)
        return response

    def _bounded(self, decision: Decision, req: AuthzRequest) -> Decision:
        """The decision without the output headers Envoy's limits leave no room for.

        Each one left out is logged and counted; the request still goes on without it.
        """
        headers = req.headers
        extra_lines = sum(len(lines) - 1 for lines in req.header_lines.values())
        max_bytes = self.max_request_headers_kb * 1024
        kept, dropped = fit(decision.headers_to_add, used_bytes=header_bytes(headers),
                            used_count=len(headers) + extra_lines, max_bytes=max_bytes,
                            max_count=self.max_headers_count)
        if not dropped:
            return decision
        for name, size in dropped:
            self.metrics.count_dropped_header()
            log_event(_log, "authz_output_header_dropped", logging.WARNING, header=name,
                      bytes=size, max_request_headers_kb=self.max_request_headers_kb,
                      max_headers_count=self.max_headers_count,
                      request_id=req.request_id, request_principal=decision.principal)
        return replace(decision, headers_to_add=kept)

    def record(self, decision: Decision, req: AuthzRequest,
               view: WorkloadView | None = None) -> None:
        """Count and log one decision (deny, dry-run deny, audit and 401 are logged)."""
        m = self.metrics
        verdict = decision.verdict
        m.results[verdict].inc()
        by = decision.decided_by
        if by is not None:
            m.count_policy(by.policy, verdict)
        elif verdict == "deny":
            m.count_policy("-", "deny")
        if verdict == "allow" and not decision.dry_run_denied and decision.audit is None:
            return  # the common case: nothing to log
        logging_on = _log.isEnabledFor(logging.INFO)
        if verdict != "allow" and logging_on:
            log_event(
                _log, "authz_denied" if verdict == "deny" else "authz_unauthenticated",
                logging.INFO, status=decision.status, reason=decision.reason,
                policy=by.policy if by else None,
                rule=by.rule_id if by else None,
                # A default deny names no rule: list the ALLOW policies none of which matched.
                allow_policies=None if by or view is None else list(view.allow_policy_keys),
                **_request_fields(req, decision),
            )
        if decision.dry_run_denied:
            m.count("dry_run_deny")
            dry_by = decision.dry_run_by
            if dry_by is not None:
                m.count_policy(dry_by.policy, "dry_run_deny")
            if logging_on:
                log_event(
                    _log, "authz_dry_run_denied", logging.INFO, enforced=verdict,
                    reason=decision.dry_run_reason, policy=dry_by.policy if dry_by else None,
                    rule=dry_by.rule_id if dry_by else None, **_request_fields(req, decision),
                )
        if decision.audit is not None:
            m.count("audit")
            m.count_policy(decision.audit.policy, "audit")
            if logging_on:
                log_event(
                    _log, "authz_audit", logging.INFO, enforced=verdict,
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
