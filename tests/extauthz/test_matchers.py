"""Compiled matchers: path templates."""

from __future__ import annotations

import random
import re
from typing import Any

from extauthz.matchers import Template, template_regex
from tests.extauthz.policies import NS, allow_policy


def test_template_match_is_linear_on_hostile_paths(h: Any) -> None:
    """A {**} template against a long path that nearly matches answers quickly."""
    ps = h.policies(allow_policy('{to: [{operation: {paths: ["/a/{*}/{**}/x/y/z"]}}]}'))
    req = h.request("/a/b/" + "x/y/" * 20000 + "q", context_extensions=NS)
    # Segment matching never backtracks: this returns at once (a regex engine could not).
    assert h.evaluate(ps, req).verdict == "deny"


def test_template_segments_agree_with_template_regex() -> None:
    """Segment matching of {*}/{**} templates equals full-matching their regex."""
    templates = ["/a/{*}", "/a/{**}", "/{*}/b/{**}/c", "/store/{**}/cart", "/{**}", "/a/{**}/",
                 "/{*}/{*}", "//{*}/x", "/a/{*}/{**}/x/y", "/{*}"]
    rng = random.Random(3)
    alphabet = ["a", "b", "c", "x", "y", "store", "cart", "", "ab"]
    for _ in range(3000):
        path = "/" + "/".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
        for text in templates:
            expected = re.fullmatch(template_regex(text), path) is not None
            assert Template.compile(text).matches(path) is expected, (text, path)
