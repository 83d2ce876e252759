"""RequestAuthentication: token extraction, verification, Istio's 401/no-token semantics."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from extauthz.engine import decide
from extauthz.jwt import Authenticator, AuthnOutcome, JwksCache
from extauthz.request import AuthzRequest

ISS = "https://issuer.example"


def authn_yaml(signer: Any, extra: str = "", jwks: str | None = None) -> str:
    """A RequestAuthentication for ``signer`` with optional extra jwtRule keys."""
    keys = f"jwks: {json.dumps(signer.jwks)}" if jwks is None else jwks
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: {ISS}
    {keys}
{extra}
"""


REQUIRE_JWT = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"""


async def run(ps: Any, req: AuthzRequest, authenticator: Authenticator | None = None) -> Any:
    """Authenticate then decide, as the servicer does."""
    view = ps.view(req.context_extensions)
    outcome = await (authenticator or Authenticator()).authenticate(view.jwt_rules, req)
    return outcome, decide(ps, view, req, outcome)


def bearer(token: str) -> dict[str, Any]:
    """Request kwargs carrying ``token`` in the default location, in workload namespace foo."""
    return {"headers": {"authorization": f"Bearer {token}"},
            "context_extensions": {"namespace": "foo"}}


async def test_valid_token_sets_principal_and_claims(h: Any, signer: Any) -> None:
    """A valid token gives request.auth.principal iss/sub and passes requestPrincipals: ["*"]."""
    ps = h.policies(authn_yaml(signer) + REQUIRE_JWT)
    outcome, d = await run(ps, h.request("/", **bearer(signer.token(groups=["g1"]))))
    assert outcome.identity.principal == f"{ISS}/alice"
    assert outcome.identity.claims["groups"] == ["g1"]
    assert d.verdict == "allow"
    assert d.headers_to_remove == ("authorization",)  # forwardOriginalToken defaults to false


async def test_missing_token_passes_authn_and_policy_decides(h: Any, signer: Any) -> None:
    """No token: authentication passes without principal; requestPrincipals ["*"] -> 403."""
    ps = h.policies(authn_yaml(signer) + REQUIRE_JWT)
    outcome, d = await run(ps, h.request("/", context_extensions={"namespace": "foo"}))
    assert outcome.identity is None and outcome.error is None
    assert (d.verdict, d.status) == ("deny", 403)
    only_authn = h.policies(authn_yaml(signer))
    _, d2 = await run(only_authn, h.request("/", context_extensions={"namespace": "foo"}))
    assert d2.verdict == "allow"


def _forge_hs256(signer: Any) -> str:
    """Algorithm confusion: HS256 'signed' with the RSA public key as the HMAC secret."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    payload = b64(json.dumps({"iss": ISS, "sub": "mallory",
                              "exp": int(time.time()) + 600}).encode())
    secret = signer.key.as_pem(private=False)
    sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(sig)}"


def _none_token() -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    return (b64(b'{"alg":"none"}') + "."
            + b64(json.dumps({"iss": ISS, "sub": "x", "exp": int(time.time()) + 60}).encode())
            + ".")


@pytest.mark.parametrize(("make", "error"), [
    (lambda s, o: s.token(exp=int(time.time()) - 3600), "Jwt is expired"),
    (lambda s, o: s.token(nbf=int(time.time()) + 3600), "Jwt not yet valid"),
    (lambda s, o: s.token(iss="https://evil.example"), "Jwt issuer is not configured"),
    (lambda s, o: o.token(), "Jwt verification fails (BadSignatureError)"),
    (lambda s, o: _forge_hs256(s),
     "Jwt verification fails (algorithm 'HS256' not allowed by the JWKS)"),
    (lambda s, o: _none_token(),
     "Jwt verification fails (algorithm 'none' not allowed by the JWKS)"),
    (lambda s, o: "not-a-jwt",
     "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
    (lambda s, o: s.token()[:-4] + "AAAA", "Jwt verification fails (BadSignatureError)"),
])
async def test_invalid_tokens_get_401(h: Any, signer: Any, other_signer: Any, make: Any,
                                      error: str) -> None:
    """Expired, not-yet-valid, foreign issuer, wrong key, HS256 confusion, alg none -> 401."""
    ps = h.policies(authn_yaml(signer))
    outcome, d = await run(ps, h.request("/", **bearer(make(signer, other_signer))))
    assert outcome.error == error
    assert (d.verdict, d.status, d.body) == ("unauthenticated", 401, error)
    assert d.response_headers[0][0] == "www-authenticate"


async def test_audiences(h: Any, signer: Any) -> None:
    """With audiences set, a token must carry one of them."""
    ps = h.policies(authn_yaml(signer, "    audiences: [api, web]"))
    ok, d = await run(ps, h.request("/", **bearer(signer.token(aud=["web", "x"]))))
    assert d.verdict == "allow" and ok.identity.audiences == ("web", "x")
    bad, d2 = await run(ps, h.request("/", **bearer(signer.token(aud="other"))))
    assert (bad.error, d2.status) == ("Audiences in Jwt are not allowed", 401)


async def test_from_headers_prefix_and_params(h: Any, signer: Any) -> None:
    """fromHeaders with prefix and fromParams replace the default locations."""
    extra = ("    fromHeaders: [{name: x-jwt, prefix: 'Token '}]\n"
             "    fromParams: [tok]")
    ps = h.policies(authn_yaml(signer, extra) + REQUIRE_JWT)
    token = signer.token()
    ns = {"context_extensions": {"namespace": "foo"}}
    _, d = await run(ps, h.request("/", headers={"x-jwt": f"Token {token}"}, **ns))
    assert d.verdict == "allow" and d.headers_to_remove == ("x-jwt",)
    _, d = await run(ps, h.request(f"/?tok={token}", **ns))
    assert d.verdict == "allow" and d.params_to_remove == ("tok",)
    # Wrong prefix: not extracted (missing token), default Authorization is not consulted.
    _, d = await run(ps, h.request("/", headers={"x-jwt": token}, **ns))
    assert d.verdict == "deny"
    _, d = await run(ps, h.request("/", **bearer(token)))
    assert d.verdict == "deny"


async def test_default_locations_include_access_token_param(h: Any, signer: Any) -> None:
    """Without fromHeaders/fromParams, ?access_token= is a token location too."""
    ps = h.policies(authn_yaml(signer) + REQUIRE_JWT)
    _, d = await run(ps, h.request(f"/x?access_token={signer.token()}",
                                   context_extensions={"namespace": "foo"}))
    assert d.verdict == "allow"


async def test_output_headers_and_forwarding(h: Any, signer: Any) -> None:
    """outputPayloadToHeader, outputClaimToHeaders (nested, int, bool) and forwardOriginalToken."""
    extra = ("    outputPayloadToHeader: x-jwt-payload\n"
             "    forwardOriginalToken: true\n"
             "    outputClaimToHeaders:\n"
             "    - {header: x-sub, claim: sub}\n"
             "    - {header: x-tier, claim: org.tier}\n"
             "    - {header: x-level, claim: level}\n"
             "    - {header: x-admin, claim: admin}\n"
             "    - {header: x-missing, claim: nope}")
    ps = h.policies(authn_yaml(signer, extra))
    token = signer.token(org={"tier": "gold"}, level=3, admin=True)
    _, d = await run(ps, h.request("/", **bearer(token)))
    headers = dict(d.headers_to_add)
    payload = json.loads(base64.urlsafe_b64decode(headers.pop("x-jwt-payload") + "=="))
    assert payload["sub"] == "alice"
    assert headers == {"x-sub": "alice", "x-tier": "gold", "x-level": "3", "x-admin": "true"}
    assert d.headers_to_remove == ()


async def test_jwks_uri_file(h: Any, signer: Any, tmp_path: Path) -> None:
    """jwksUri file:// (relative to the policy file) verifies tokens."""
    (tmp_path / "jwks.json").write_text(signer.jwks)
    (tmp_path / "p.yaml").write_text(authn_yaml(signer, jwks="jwksUri: file://jwks.json"))
    from extauthz.policy import load_policies

    ps = load_policies(tmp_path / "p.yaml")
    assert ps.authentications[0].rules[0].jwks_uri == f"file://{tmp_path}/jwks.json"
    outcome, d = await run(ps, h.request("/", **bearer(signer.token())))
    assert d.verdict == "allow" and outcome.identity is not None


async def test_jwks_uri_http_cached_and_refreshed(h: Any, signer: Any,
                                                  other_signer: Any) -> None:
    """jwksUri http:// is fetched once, cached, refreshed after the interval (injected clock)."""
    served = {"jwks": signer.jwks, "hits": 0}

    async def jwks(_: web.Request) -> web.Response:
        served["hits"] += 1
        return web.Response(text=served["jwks"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        now = [1000.0]
        cache = JwksCache(refresh=60, clock=lambda: now[0])
        auth = Authenticator(cache)
        ps = h.policies(authn_yaml(signer, jwks=f"jwksUri: http://127.0.0.1:{port}/jwks.json"))
        for _ in range(3):
            _outcome, d = await run(ps, h.request("/", **bearer(signer.token())), auth)
            assert d.verdict == "allow"
        assert served["hits"] == 1
        served["jwks"] = other_signer.jwks   # key rotation at the issuer
        now[0] += 61
        await run(ps, h.request("/", **bearer(signer.token())), auth)  # stale: served, refreshing
        await cache.settled()
        assert served["hits"] == 2
        _, d = await run(ps, h.request("/", **bearer(other_signer.token())), auth)
        assert d.verdict == "allow"
        _, d = await run(ps, h.request("/", **bearer(signer.token())), auth)
        assert d.status == 401
    finally:
        await runner.cleanup()


async def test_unreachable_jwks_uri_rejects_tokens(h: Any, signer: Any, free_port: Any) -> None:
    """Without keys (fetch failed) a present token is rejected with 401, no token still passes."""
    ps = h.policies(authn_yaml(signer, jwks=f"jwksUri: http://127.0.0.1:{free_port()}/jwks"))
    auth = Authenticator(JwksCache())
    outcome, d = await run(ps, h.request("/", **bearer(signer.token())), auth)
    assert (outcome.error, d.status) == ("Jwks remote fetch is failed", 401)
    _, d = await run(ps, h.request("/", context_extensions={"namespace": "foo"}), auth)
    assert d.verdict == "allow"


def test_no_rules_means_no_token_outcome() -> None:
    """A workload without RequestAuthentication never inspects tokens."""
    assert AuthnOutcome().identity is None and AuthnOutcome().error is None


async def test_verified_signature_cache_still_checks_expiry(h: Any, signer: Any) -> None:
    """A cached signature is reused, but expiry is re-checked against the injected clock."""
    now = [time.time()]
    auth = Authenticator(clock=lambda: now[0])
    ps = h.policies(authn_yaml(signer))
    token = signer.token(exp=int(now[0]) + 10)
    first, _ = await run(ps, h.request("/", **bearer(token)), auth)
    again, _ = await run(ps, h.request("/", **bearer(token)), auth)
    assert first.identity == again.identity and auth.cached_signatures == 1
    now[0] += 10 + 61  # past exp plus Envoy's 60 s skew
    late, d = await run(ps, h.request("/", **bearer(token)), auth)
    assert (late.error, d.status) == ("Jwt is expired", 401)


async def test_from_cookies(h: Any, signer: Any) -> None:
    """fromCookies reads the token from a named cookie."""
    ps = h.policies(authn_yaml(signer, "    fromCookies: [session]") + REQUIRE_JWT)
    cookie = f"theme=dark; session={signer.token()}"
    outcome, d = await run(ps, h.request("/", headers={"cookie": cookie},
                                         context_extensions={"namespace": "foo"}))
    assert d.verdict == "allow" and outcome.identity.principal == f"{ISS}/alice"
