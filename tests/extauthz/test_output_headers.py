"""The JWT output header names of a workload, the strip list and the size bound."""

from __future__ import annotations

from extauthz.jwt import JwtRule
from extauthz.output_headers import (
    OutputHeaderNames,
    output_header_names,
    strip_list,
    within_limit,
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


def test_within_limit_counts_name_and_utf8_value() -> None:
    """A header fits when its name plus UTF-8 value fit; larger ones are reported with size."""
    kept, dropped = within_limit((("x-a", "é" * 3), ("x-b", "b" * 10)), max_bytes=9)
    assert kept == (("x-a", "é" * 3),)
    assert dropped == (("x-b", 13),)
