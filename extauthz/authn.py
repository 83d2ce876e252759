"""RequestAuthentication -> the ``Authentication`` model: JWT rules ready for ``extauthz.jwt``.

Inline ``jwks`` and local ``file://`` key sets are parsed at load, so a broken key set fails
the load (a reload keeps the previous policies) rather than turning every token into a 401.
Remote ``jwksUri`` key sets are fetched later by ``extauthz.jwt.JwksCache``.
"""

from __future__ import annotations

from pathlib import Path

from envoy_mixer.common.yamlsrc import SourceDoc
from extauthz.errors import JwksError
from extauthz.jwt import DEFAULT_SPACE_DELIMITED, JwtRule, TokenLocation, parse_jwks
from extauthz.model import Authentication
from extauthz.schema import RequestAuthenticationSpec


def _timeout_seconds(doc: SourceDoc, value: str | None, where: tuple[str | int, ...]) -> float:
    if value is None:
        return 5.0
    text = value.strip()
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000
        if text.endswith("s"):
            return float(text[:-1])
    except ValueError:
        pass
    raise doc.error(f"invalid duration '{value}' (expected e.g. '5s' or '500ms')", where)


def authentication_model(doc: SourceDoc, spec: RequestAuthenticationSpec, name: str,
                         namespace: str, selector: tuple[tuple[str, str], ...],
                         base: tuple[str | int, ...], root: Path) -> Authentication:
    """A RequestAuthentication's spec as the model's ``Authentication`` (keys checked now).

    ``base`` is the resource's path in ``doc`` (errors name ``spec.jwtRules[i]...`` under it);
    ``root`` resolves relative ``file://`` key sets.
    """
    key = f"{namespace}/{name}"
    rules: list[JwtRule] = []
    for i, r in enumerate(spec.jwt_rules):
        where = (*base, "spec", "jwtRules", i)
        if not r.issuer.strip():
            raise doc.error("issuer must not be empty", (*where, "issuer"))
        if r.jwks and r.jwks_uri:
            raise doc.error("set only one of jwks and jwksUri", (*where, "jwksUri"))
        keys = None
        uri = None
        if r.jwks is not None:
            try:
                keys = parse_jwks(r.jwks)
            except JwksError as exc:
                raise doc.error(str(exc), (*where, "jwks")) from None
        elif r.jwks_uri is not None:
            uri = _resolve_uri(r.jwks_uri, root)
            if uri is None:
                raise doc.error(f"jwksUri '{r.jwks_uri}' must be file://, http:// or https://",
                                (*where, "jwksUri"))
            if uri.startswith("file://"):
                # A local key file is checked now, so a typo fails the load (and a reload keeps
                # the previous policies) instead of turning every token into a 401 later.
                try:
                    parse_jwks(Path(uri[len("file://"):]).read_text(encoding="utf-8"))
                except OSError as exc:
                    raise doc.error(f"cannot read jwksUri file: {exc.strerror or exc}",
                                    (*where, "jwksUri")) from None
                except JwksError as exc:
                    raise doc.error(f"jwksUri file: {exc}", (*where, "jwksUri")) from None
        else:
            raise doc.error("one of jwks or jwksUri is required (there is no OIDC discovery "
                            "here)", where)
        locations = [TokenLocation("header", h.name.lower(), h.prefix) for h in r.from_headers]
        locations += [TokenLocation("param", p) for p in r.from_params]
        locations += [TokenLocation("cookie", c) for c in r.from_cookies]
        if not locations:
            locations = [TokenLocation("header", "authorization", "Bearer "),
                         TokenLocation("param", "access_token")]
        rules.append(JwtRule(
            policy=key, index=i, issuer=r.issuer, audiences=frozenset(r.audiences),
            locations=tuple(locations), jwks=keys, jwks_uri=uri,
            output_payload_to_header=r.output_payload_to_header.lower()
            if r.output_payload_to_header else None,
            output_claim_to_headers=tuple((c.header.lower(), c.claim)
                                          for c in r.output_claim_to_headers),
            forward_original_token=r.forward_original_token,
            space_delimited_claims=DEFAULT_SPACE_DELIMITED | frozenset(r.space_delimited_claims),
            timeout=_timeout_seconds(doc, r.timeout, (*where, "timeout")),
        ))
    return Authentication(namespace=namespace, name=name, selector=selector,
                          rules=tuple(rules))


def _resolve_uri(uri: str, root: Path) -> str | None:
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("file://"):
        raw = uri[len("file://"):]
        path = Path(raw)
        if not path.is_absolute():
            # Relative file URIs resolve against the policy file's directory.
            path = (root / path).resolve()
        return "file://" + str(path)
    return None


__all__ = ["authentication_model"]
