"""The JWT output header names of a workload, the strip list and the size bound."""

from __future__ import annotations

from extauthz.jwt import JwtRule
from extauthz.output_headers import (
    OutputHeaderNames,
    fit,
    header_bytes,
    output_header_names,
    strip_list,
)


def _rule(payload: str | None = None, *claims: tuple[str, str]) -> JwtRule:
    return JwtRule(policy="foo/jwt", index=0, issuer="i", audiences=frozenset(), locations=(),
                   output_payload_to_header=payload, output_claim_to_headers=claims)


def test_names_cover_every_rule_once_lower_case() -> None:
    """Payload and claim headers of all rules, lower-cased, each once, in rule order."""
    rules = (_rule("X-Jwt-Payload", ("x-sub", "sub")), _rule(None, ("X-Sub", "sub"), ("x-r", "r")))
    assert output_header_names(rules) == ("x-jwt-payload", "x-sub", "x-r")
    assert output_header_names(()) == ()


def test_names_are_computed_once_per_rule_tuple() -> None:
    """The same rule tuple gives the very same names tuple (it keys the response cache)."""
    cache = OutputHeaderNames()
    rules = (_rule("x-p"),)
    assert cache.get(rules) is cache.get(rules) == ("x-p",)
    assert cache.get(()) == ()


def test_strip_list_keeps_the_token_removal_and_skips_set_headers() -> None:
    """A header being set is never also removed; unset output headers and the token go."""
    assert strip_list(("x-sub", "x-role"), (("x-sub", "alice"),), ("authorization",)) == (
        "authorization", "x-role")
    assert strip_list(("x-a",), (), ()) == ("x-a",)


def test_fit_adds_in_order_while_the_request_stays_within_both_limits() -> None:
    """A header that would pass the byte budget is skipped; a later, smaller one still fits."""
    headers = (("x-p", "p" * 50), ("x-a", "é" * 3), ("x-b", "b"))
    kept, dropped = fit(headers, used_bytes=90, used_count=1, max_bytes=100)
    assert kept == (("x-a", "é" * 3),)  # 3 + 6 bytes: 99
    assert dropped == (("x-p", 53), ("x-b", 4))
    kept, dropped = fit(headers, used_bytes=0, used_count=98, max_count=100)
    assert [name for name, _ in kept] == ["x-p", "x-a"] and dropped == (("x-b", 4),)


def test_header_bytes_counts_names_and_utf8_values() -> None:
    """Envoy's byte size of a header map: name plus value bytes of each header."""
    assert header_bytes({"ab": "cd", "x": "é"}) == 4 + 3
