"""Rule indexes are an optimization only: they find what brute force over every rule finds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from extauthz.index import PathIndex
from extauthz.matchers import Attributes
from tests.extauthz.policies import NS, allow_policy


def test_index_agrees_with_brute_force(h: Any) -> None:
    """Indexed first_match equals evaluating every rule in order, over random requests."""
    rng = random.Random(7)
    docs = []
    for i in range(60):
        kind = i % 5
        if kind == 0:
            op = f'paths: ["/svc{i}", "/pre{i % 7}/*"]'
        elif kind == 1:
            op = f'hosts: ["h{i % 4}.com"]'
        elif kind == 2:
            op = f'methods: ["{rng.choice(["GET", "POST"])}"], paths: ["*.png"]'
        elif kind == 3:
            op = f'paths: ["/pre{i % 3}*"], methods: ["DELETE"]'
        else:
            op = f'notPaths: ["/svc{i}"]'
        docs.append(allow_policy(f"{{to: [{{operation: {{{op}}}}}]}}", f"p{i}",
                                 action=rng.choice(["ALLOW", "DENY"])))
    ps = h.policies("---".join(docs))
    view = ps.view(NS)
    for _ in range(400):
        path = rng.choice(["/svc1", "/svc5", "/pre1/a", "/pre2x", "/a.png", "/zzz", "/svc10"])
        req = h.request(path, method=rng.choice(["GET", "POST", "DELETE"]),
                        host=rng.choice(["h0.com", "H1.com", "x"]), context_extensions=NS)
        attrs = Attributes(req)
        for index in (view.allow, view.deny):
            brute = next((r for r in index.rules if r.matches(attrs)), None)
            assert index.first_match(attrs) is brute


def test_index_agrees_with_brute_force_nested_prefixes_suffixes_headers(h: Any) -> None:
    """Nested/overlapping prefixes, templates, suffixes, header and case-insensitive keys."""
    rng = random.Random(11)
    ops = [
        'paths: ["/a/*"]', 'paths: ["/a/b/*"]', 'paths: ["/a/b/c*"]', 'paths: ["/ab*"]',
        'paths: ["/a*"]', 'paths: ["/a/b/{*}/d"]', 'paths: ["/a/{**}"]', 'paths: ["/b/*"]',
        'paths: ["*.png", "/x/*"]', 'paths: ["*.js"]', 'paths: ["*/c"]', 'paths: ["/a/b"]',
        'hosts: ["h.com"], paths: ["*.png"]', 'notPaths: ["/a/*"]', 'paths: ["*"]',
    ]
    docs = []
    for i, op in enumerate(ops):
        rule = f"{{to: [{{operation: {{{op}}}}}]}}"
        if i % 4 == 3:
            rule = rule[:-1] + ', when: [{key: "request.headers[x-a]", values: ["1"]}]}'
        docs.append(allow_policy(rule, f"p{i}", action=rng.choice(["ALLOW", "DENY"])))
    for i, header in enumerate(["x-a", "X-B", "x-c"]):
        docs.append(allow_policy(f'{{when: [{{key: "request.headers[{header}]", '
                                 f'values: ["*"]}}]}}', f"hdr{i}", action="DENY"))
    # A header that must NOT carry a value matches when it is absent: never header-indexed.
    docs.append(allow_policy('{when: [{key: "request.headers[x-d]", notValues: ["1"]}]}',
                             "not-hdr", action="ALLOW"))
    docs.append(allow_policy('{to: [{operation: {paths: ["/ADMIN/*", "*.PHP"]}}]}', "ci",
                             action="DENY", extra_meta=", annotations: "
                             '{authz.envoy-mixer.io/case-insensitive-paths: "true"}'))
    ps = h.policies("---".join(docs))
    view = ps.view(NS)
    paths = ["/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/c", "/a/b/cd/d", "/a/b/x/d", "/ab",
             "/abc", "/b", "/b/1", "/x/y.png", "/y.js", "/q/c", "/Admin/x", "/i.PhP", "/a.png",
             "/aa", "/0", "/~"]
    for _ in range(600):
        headers = {name: "1" for name in ("x-a", "x-b", "x-c", "x-d") if rng.random() < 0.3}
        req = h.request(rng.choice(paths), host=rng.choice(["h.com", "x"]), headers=headers,
                        context_extensions=NS)
        attrs = Attributes(req)
        for index in (view.allow, view.deny):
            brute = next((r for r in index.rules if r.matches(attrs)), None)
            assert index.first_match(attrs) is brute


def _random_rules_policy(rng: random.Random, count: int) -> str:
    """Policies mixing every index dimension with sources, conditions and several `to`s."""
    docs = []
    for i in range(count):
        kind = i % 8
        if kind == 0:
            rule = f'{{to: [{{operation: {{paths: ["/d{i % 9}/", "/d{i % 9}/x*"]}}}}]}}'
        elif kind == 1:
            rule = (f'{{from: [{{source: {{principals: ["p{i % 3}"]}}}}], '
                    f'to: [{{operation: {{paths: ["/d{i % 5}/*", "*.png"]}}}}]}}')
        elif kind == 2:
            rule = (f'{{to: [{{operation: {{hosts: ["H{i % 3}.com"], '
                    f'methods: ["{rng.choice(["GET", "POST"])}"]}}}}]}}')
        elif kind == 3:
            rule = (f'{{to: [{{operation: {{paths: ["/d{i % 4}/{{*}}/z", "/e{i % 4}"]}}}}], '
                    f'when: [{{key: "request.headers[x-a]", values: ["{i % 2}"]}}]}}')
        elif kind == 4:
            # Two `to` entries: a hit on one entry's path says nothing about the other's.
            rule = (f'{{to: [{{operation: {{paths: ["/d{i % 3}/*"], methods: ["GET"]}}}}, '
                    f'{{operation: {{paths: ["/e{i % 3}"], methods: ["POST"]}}}}]}}')
        elif kind == 5:
            rule = f'{{to: [{{operation: {{methods: ["DELETE"], notPaths: ["/e{i % 3}"]}}}}]}}'
        elif kind == 6:
            rule = (f'{{to: [{{operation: {{paths: ["/d{i % 6}", "/x/*"], '
                    f'ports: ["{8080 + i % 2}"]}}}}]}}')
        else:
            rule = f'{{when: [{{key: "request.headers[x-b]", values: ["{i % 3}"]}}]}}'
        docs.append(allow_policy(rule, f"p{i}", action=rng.choice(["ALLOW", "DENY"])))
    return "---".join(docs)


def _random_attrs(rng: random.Random, h: Any) -> Attributes:
    path = rng.choice(["/d0/", "/d1/x", "/d2/xy", "/d3/q/z", "/d0/q/z", "/e1", "/e2", "/d4/a",
                       "/a.png", "/d5", "/x/1", "/", "/d1", "/d3/", "/zzz"])
    headers = {k: str(rng.randrange(3)) for k in ("x-a", "x-b") if rng.random() < 0.5}
    req = h.request(path, method=rng.choice(["GET", "POST", "DELETE"]),
                    host=rng.choice(["h0.com", "H1.COM", "h2.com", "x"]), headers=headers,
                    source_principal=rng.choice(["spiffe://p0", "spiffe://p1", None]),
                    destination_port=rng.choice([8080, 8081, None]), context_extensions=NS)
    return Attributes(req)


@pytest.mark.parametrize("slash_probe_min", [1, 10**9])
def test_residual_tests_agree_with_full_rules(h: Any, monkeypatch: pytest.MonkeyPatch,
                                              slash_probe_min: int) -> None:
    """Index + per-rule residual equals brute force, with "/" prefixes probed or bisected."""
    monkeypatch.setattr(PathIndex, "SLASH_PROBE_MIN", slash_probe_min)
    rng = random.Random(5)
    ps = h.policies(_random_rules_policy(rng, 96))
    view = ps.view(NS)
    for _ in range(800):
        attrs = _random_attrs(rng, h)
        for index in (view.allow, view.deny):
            brute = next((r for r in index.rules if r.matches(attrs)), None)
            assert index.first_match(attrs) is brute
