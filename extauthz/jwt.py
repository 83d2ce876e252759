"""RequestAuthentication: find JWTs in a request, verify them, and derive Istio's identity.

Semantics follow Istio (Envoy's ``jwt_authn`` with "any provider, or missing"):

- no token at any configured location -> authentication passes with no identity and the
  authorization policies decide (``requestPrincipals: ["*"]`` is how a policy demands one);
- a token that is present but invalid (bad signature, unknown key, ``alg: none``, expired or not
  yet valid, wrong issuer or audience, issuer not configured) -> 401;
- a valid token -> ``request.auth.principal = <iss>/<sub>``, claims, audiences, presenter, plus
  the ``outputPayloadToHeader`` / ``outputClaimToHeaders`` headers, and the token removed from
  the request unless ``forwardOriginalToken``.

Verification uses joserfc with an explicit algorithm allow-list derived from the key types in
the JWKS, so an RSA public key can never be used as an HMAC secret (algorithm confusion) and
``none`` is never accepted. JWKS from ``jwksUri`` (``file://`` or ``http(s)://``) are cached
with an injected clock and refreshed in the background; a failed refresh keeps the old keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from envoy_mixer.common.logs import log_event
from extauthz.errors import JwksError
from extauthz.matchers import AuthIdentity
from extauthz.request import AuthzRequest

_log = logging.getLogger("extauthz.jwt")

#: Claims Istio always splits on spaces (plus ``spaceDelimitedClaims``).
DEFAULT_SPACE_DELIMITED = frozenset({"scope", "permission"})
#: Envoy's default clock skew allowance for ``exp``/``nbf``.
CLOCK_SKEW_SECONDS = 60

_ALGORITHMS_BY_KTY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
    "oct": ("HS256", "HS384", "HS512"),
}


class TokenError(Exception):
    """A present token is invalid; the message is what the 401 says (Envoy's wording)."""


@dataclass(frozen=True, slots=True)
class TokenLocation:
    """Where a rule looks for a token: a header (with prefix), a query param or a cookie."""

    kind: str  # "header" | "param" | "cookie"
    name: str
    prefix: str = ""

    def extract(self, request: AuthzRequest, params: Mapping[str, str],
                cookies: Mapping[str, str]) -> str | None:
        """The token at this location, or None when absent (or the prefix does not match)."""
        if self.kind == "header":
            value = request.headers.get(self.name)
            if value is None or not value.startswith(self.prefix):
                return None
            token = value[len(self.prefix):].strip()
        elif self.kind == "param":
            token = params.get(self.name, "")
        else:
            token = cookies.get(self.name, "")
        return token or None


@dataclass(frozen=True, slots=True, eq=False)
class JwtRule:
    """One compiled ``jwtRules`` entry of a RequestAuthentication."""

    policy: str
    index: int
    issuer: str
    audiences: frozenset[str]
    locations: tuple[TokenLocation, ...]
    jwks: KeySet | None = None
    jwks_uri: str | None = None
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()
    forward_original_token: bool = False
    space_delimited_claims: frozenset[str] = DEFAULT_SPACE_DELIMITED
    timeout: float = 5.0

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``/config``."""
        return {
            "policy": self.policy, "index": self.index, "issuer": self.issuer,
            "audiences": sorted(self.audiences), "jwks_uri": self.jwks_uri,
            "inline_jwks": self.jwks is not None,
            "locations": [f"{loc.kind}:{loc.name}" for loc in self.locations],
        }


@dataclass(frozen=True, slots=True)
class AuthnOutcome:
    """Result of authentication: an identity (or none), or an error meaning 401."""

    identity: AuthIdentity | None = None
    error: str | None = None
    headers_to_add: tuple[tuple[str, str], ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    params_to_remove: tuple[str, ...] = ()
    rule: str | None = None


NO_TOKEN = AuthnOutcome()


def parse_jwks(data: str | Mapping[str, Any]) -> KeySet:
    """Parse a JWKS document (JSON text or mapping); raises JwksError."""
    try:
        obj = json.loads(data) if isinstance(data, str) else dict(data)
        if not isinstance(obj, dict) or not isinstance(obj.get("keys"), list):
            raise JwksError("JWKS must be a JSON object with a 'keys' list")
        return KeySet.import_key_set(obj)  # type: ignore[arg-type]
    except JwksError:
        raise
    except (ValueError, TypeError, KeyError, JoseError) as exc:
        raise JwksError(f"invalid JWKS: {exc}") from None


def allowed_algorithms(keys: KeySet) -> list[str]:
    """Algorithms the keys can verify: never ``none``, HMAC only for explicit ``oct`` keys."""
    algs: list[str] = []
    for key in keys.keys:
        for alg in _ALGORITHMS_BY_KTY.get(key.key_type, ()):
            if alg not in algs:
                algs.append(alg)
    return algs


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a compact JWS before verification (to pick the rule); raises TokenError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )
    try:
        payload = _b64json(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise TokenError("Jwt payload is an invalid JSON") from None
    if not isinstance(payload, dict):
        raise TokenError("Jwt payload is an invalid JSON")
    iss = payload.get("iss")
    return iss if isinstance(iss, str) else None


def verify_signature(token: str, keys: KeySet) -> dict[str, Any]:
    """Check the signature against ``keys`` (allow-listed algorithms only); returns the claims."""
    try:
        header = _b64json(token.split(".")[0])
    except (ValueError, binascii.Error, UnicodeDecodeError, IndexError):
        raise TokenError("Jwt header is an invalid JSON") from None
    alg = header.get("alg") if isinstance(header, dict) else None
    algs = allowed_algorithms(keys)
    if not isinstance(alg, str) or alg not in algs:
        raise TokenError(f"Jwt verification fails (algorithm {alg!r} not allowed by the JWKS)")
    try:
        decoded = jose_jwt.decode(token, keys, algorithms=algs)
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenError(f"Jwt verification fails ({type(exc).__name__})") from None
    return dict(decoded.claims)


def check_claims(claims: Mapping[str, Any], rule: JwtRule, now: float) -> None:
    """Issuer, time window (with Envoy's 60 s skew) and audiences; raises TokenError."""
    if claims.get("iss") != rule.issuer:
        raise TokenError("Jwt issuer is not configured")
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("Jwt verification fails (exp is not a number)")
        if now >= exp + CLOCK_SKEW_SECONDS:
            raise TokenError("Jwt is expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise TokenError("Jwt verification fails (nbf is not a number)")
        if now + CLOCK_SKEW_SECONDS < nbf:
            raise TokenError("Jwt not yet valid")
    if rule.audiences and not rule.audiences.intersection(token_audiences(claims)):
        raise TokenError("Audiences in Jwt are not allowed")


def token_audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """``aud`` as a tuple of strings (a single string or a list)."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()


def claim_path(claims: Mapping[str, Any], path: Sequence[str]) -> Any:
    """A nested claim (``["a", "b"]`` -> ``claims["a"]["b"]``), or None."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _claim_header_value(value: Any) -> str | None:
    # Istio forwards string, integer and boolean claims; objects and lists are skipped.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def identity_from(claims: Mapping[str, Any], rule: JwtRule) -> AuthIdentity:
    """Istio's ``request.auth.*`` view of verified claims (space-delimited claims split)."""
    shaped = dict(claims)
    for name in rule.space_delimited_claims:
        value = shaped.get(name)
        if isinstance(value, str):
            shaped[name] = value.split()
    presenter = claims.get("azp")
    # Istio matches azp as a string or as a list of strings (any element); keep both forms.
    if isinstance(presenter, list):
        presenters = tuple(v for v in presenter if isinstance(v, str))
    else:
        presenters = (presenter,) if isinstance(presenter, str) else ()
    return AuthIdentity(
        principal=f"{claims.get('iss', '')}/{claims.get('sub', '')}",
        claims=shaped,
        audiences=token_audiences(claims),
        presenter=presenter if isinstance(presenter, str) else None,
        presenters=presenters,
    )


def _cookies(request: AuthzRequest) -> dict[str, str]:
    raw = request.headers.get("cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


class JwksCache:
    """JWKS by URI with refresh: ``file://`` read from disk, ``http(s)://`` fetched with aiohttp.

    ``clock`` is injected (monotonic seconds). Fresh keys are served from memory; stale keys are
    served while a background refresh runs; a URI never fetched is fetched inline (bounded by the
    rule's timeout). Failed fetches keep the previous keys and are retried after ``retry``.
    """

    def __init__(
        self,
        *,
        refresh: float = 600.0,
        retry: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.refresh = refresh
        self.retry = retry
        self._clock = clock
        self._on_fetch = on_fetch
        self._keys: dict[str, KeySet] = {}
        self._next: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}

    def peek(self, uri: str) -> KeySet | None:
        """The cached keys for ``uri`` (possibly stale), or None."""
        return self._keys.get(uri)

    def put(self, uri: str, keys: KeySet) -> None:
        """Store keys for ``uri`` (used at load for ``file://`` and by tests)."""
        self._keys[uri] = keys
        self._next[uri] = self._clock() + self.refresh

    async def settled(self) -> None:
        """Wait for every fetch or refresh in flight (tests, orderly shutdown)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def get(self, uri: str, fetch_timeout: float = 5.0) -> KeySet | None:
        """Keys for ``uri``, fetching or refreshing as needed; None if never fetched."""
        keys = self._keys.get(uri)
        due = self._clock() >= self._next.get(uri, 0.0)
        if keys is not None and not due:
            return keys
        task = self._inflight.get(uri)
        if task is None and due:
            task = asyncio.ensure_future(self._refresh(uri, fetch_timeout))
            self._inflight[uri] = task
            task.add_done_callback(lambda _t: self._inflight.pop(uri, None))
        if keys is not None or task is None:
            return keys
        await asyncio.shield(task)
        return self._keys.get(uri)

    async def _refresh(self, uri: str, fetch_timeout: float) -> None:
        try:
            keys = await fetch_jwks(uri, fetch_timeout)
        except JwksError as exc:
            self._next[uri] = self._clock() + self.retry
            log_event(_log, "jwks_fetch_failed", logging.WARNING, uri=uri, error=str(exc))
            if self._on_fetch:
                self._on_fetch("error")
            return
        self.put(uri, keys)
        if self._on_fetch:
            self._on_fetch("success")


async def fetch_jwks(uri: str, fetch_timeout: float) -> KeySet:
    """Read a JWKS from ``file://`` or ``http(s)://``; raises JwksError."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = Path(unquote(parts.netloc + parts.path))
        try:
            return parse_jwks(await asyncio.to_thread(path.read_text, encoding="utf-8"))
        except OSError as exc:
            raise JwksError(f"cannot read {path}: {exc.strerror or exc}") from None
    if parts.scheme not in ("http", "https"):
        raise JwksError(f"unsupported jwksUri scheme '{parts.scheme}'")
    import aiohttp

    try:
        limit = aiohttp.ClientTimeout(total=fetch_timeout)
        async with aiohttp.ClientSession(timeout=limit) as session, session.get(uri) as resp:
            if resp.status != 200:
                raise JwksError(f"GET {uri} answered {resp.status}")
            return parse_jwks(await resp.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise JwksError(f"GET {uri} failed: {exc or type(exc).__name__}") from None


class Authenticator:
    """Runs a workload's JWT rules over a request (async only for JWKS fetching)."""

    #: Verified signatures remembered (token -> claims); cleared whole when full.
    VERIFIED_CACHE_SIZE = 4096

    def __init__(self, cache: JwksCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cache = cache or JwksCache()
        self._clock = clock
        self._verified: dict[str, tuple[KeySet, dict[str, Any]]] = {}

    @property
    def cached_signatures(self) -> int:
        """How many verified tokens are remembered (their signatures are not checked again)."""
        return len(self._verified)

    async def _keys(self, rule: JwtRule) -> KeySet | None:
        if rule.jwks is not None:
            return rule.jwks
        if rule.jwks_uri is None:
            return None
        return await self.cache.get(rule.jwks_uri, rule.timeout)

    async def authenticate(self, rules: Sequence[JwtRule], request: AuthzRequest) -> AuthnOutcome:
        """Apply ``rules`` to ``request``: no token -> NO_TOKEN, bad token -> error (401)."""
        if not rules:
            return NO_TOKEN
        params = dict(parse_qsl(request.query, keep_blank_values=True)) if request.query else {}
        cookies = _cookies(request) if any(
            loc.kind == "cookie" for r in rules for loc in r.locations) else {}
        found: dict[str, list[tuple[JwtRule, TokenLocation]]] = {}
        for rule in rules:
            for loc in rule.locations:
                token = loc.extract(request, params, cookies)
                if token is not None:
                    found.setdefault(token, []).append((rule, loc))
        if not found:
            return NO_TOKEN
        identity: AuthIdentity | None = None
        adds: list[tuple[str, str]] = []
        removes: list[str] = []
        param_removes: list[str] = []
        chosen: str | None = None
        for token, sites in found.items():
            try:
                issuer = unverified_issuer(token)
                candidates = [(r, loc) for r, loc in sites if r.issuer == issuer]
                if not candidates:
                    raise TokenError("Jwt issuer is not configured")
                claims, rule = await self._verify_any(token, candidates)
            except TokenError as exc:
                return AuthnOutcome(error=str(exc), rule=sites[0][0].policy)
            if identity is None:
                identity = identity_from(claims, rule)
                chosen = f"{rule.policy}[{rule.index}]"
                adds.extend(_output_headers(token, claims, rule))
            if not rule.forward_original_token:
                for _r, loc in sites:
                    if loc.kind == "header":
                        removes.append(loc.name)
                    elif loc.kind == "param":
                        param_removes.append(loc.name)
        return AuthnOutcome(
            identity=identity, headers_to_add=tuple(adds),
            headers_to_remove=tuple(dict.fromkeys(removes)),
            params_to_remove=tuple(dict.fromkeys(param_removes)), rule=chosen,
        )

    async def _verify_any(
        self, token: str, candidates: Sequence[tuple[JwtRule, TokenLocation]]
    ) -> tuple[dict[str, Any], JwtRule]:
        error = TokenError("Jwks remote fetch is failed")
        for rule, _loc in candidates:
            keys = await self._keys(rule)
            if keys is None:
                continue
            try:
                claims = self._signature_ok(token, keys)
                check_claims(claims, rule, self._clock())
                return claims, rule
            except TokenError as exc:
                error = exc
        raise error

    def _signature_ok(self, token: str, keys: KeySet) -> dict[str, Any]:
        # Signature checks are the expensive part (RSA/EC); a token seen before with the very
        # same key set object is not re-verified. Claims (expiry!) are re-checked every time,
        # and a JWKS refresh or reload brings a new KeySet object, which misses the cache.
        hit = self._verified.get(token)
        if hit is not None and hit[0] is keys:
            return hit[1]
        claims = verify_signature(token, keys)
        if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (keys, claims)
        return claims


def _output_headers(token: str, claims: Mapping[str, Any], rule: JwtRule) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if rule.output_payload_to_header:
        # The payload segment is already base64url JSON; Envoy forwards exactly that.
        out.append((rule.output_payload_to_header, token.split(".")[1]))
    for header, claim in rule.output_claim_to_headers:
        value = _claim_header_value(claim_path(claims, claim.split(".")))
        if value is not None:
            out.append((header, value))
    return out

