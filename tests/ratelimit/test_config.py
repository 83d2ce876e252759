"""Config loading: envoyproxy/ratelimit's format, matching rules, errors and extensions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envoy_mixer.common.errors import ConfigError
from ratelimit.config import Algorithm, RateLimitConfig, load_config

# (request entries, expected (requests_per_unit, unit, name) or None, expected stats key)
BASIC_LOOKUPS = [
    ((("key1", "something"),), None, None),
    ((("key1", "value1"),), None, "key1_value1"),  # node exists, carries no limit
    ((("key2", "value2"), ("subkey", "subvalue")), None, None),  # deeper than the tree
    ((("key5", "value5"), ("subkey5", "subvalue")), None, None),  # no default for subkey5
    ((("key1", "value1"), ("subkey1", "something")), (5, "second", ""), "key1_value1.subkey1"),
    ((("key1", "value1"), ("subkey1", "subvalue1")), (10, "second", ""),
     "key1_value1.subkey1_subvalue1"),
    ((("key2", "something"),), (20, "minute", ""), "key2"),
    ((("key2", "value2"),), (30, "minute", ""), "key2_value2"),
    ((("key2", "value3"),), None, "key2_value3"),  # whitelist
    ((("key3", "foo"),), (1, "hour", ""), "key3"),
    ((("key4", "foo"),), (1, "day", "key4_rate_limit"), "key4"),
    ((("key5", "value5"),), (15, "day", ""), "key5_value5"),
    ((("key5", "value5"), ("subkey5", "subvalue5")), (25, "day", ""),
     "key5_value5.subkey5_subvalue5"),
]


@pytest.mark.parametrize(("entries", "expected", "stats"), BASIC_LOOKUPS)
def test_basic_lookups(
    load: Callable[[str], RateLimitConfig],
    entries: tuple[tuple[str, str], ...],
    expected: tuple[int, str, str] | None,
    stats: str | None,
) -> None:
    """Exact beats bare key, the limit at the last entry applies, deeper requests get none."""
    domain = load("basic.yaml").domain("test-domain")
    assert domain is not None
    node = domain.find(entries)
    if expected is None:
        assert node is None or not node.limits
    else:
        assert node is not None
        (lim,) = node.limits
        assert (lim.requests_per_unit, lim.unit, lim.name) == expected
    if stats is not None:
        assert node is not None and node.stats_key == stats


def test_unknown_domain_has_no_limits(load: Callable[[str], RateLimitConfig]) -> None:
    """A domain no file defines is simply absent (the limiter answers OK)."""
    config = load("basic.yaml")
    assert config.domain("foo_domain") is None
    assert config.descriptor_paths("foo_domain") == []


def test_unlimited_and_detailed_metric(load: Callable[[str], RateLimitConfig]) -> None:
    """``unlimited: true`` has no unit; detailed_metric is kept on the node."""
    domain = load("basic.yaml").domain("test-domain")
    assert domain is not None
    six = domain.find((("key6", "foo"),))
    assert six is not None and six.limits[0].unlimited and six.limits[0].seconds == 0
    seven = domain.find((("key7", "x"),))
    assert seven is not None and seven.detailed_metric and seven.runtime_stats


@pytest.mark.parametrize(("entries", "limit", "stats"), [
    ((("wild", "foo1"),), 20, "wild_foo*"),
    ((("wild", "foobar"),), 5, "wild_foobar"),  # exact beats wildcard
    ((("wild", "other"),), 1, "wild"),  # wildcard beats nothing; bare key is the fallback
    ((("wild", "foo"),), 20, "wild_foo*"),  # '*' matches the empty string
    ((("midWild", "barxyzb"),), 20, "midWild_bar*b"),
    ((("midWild", "barxyzbc"),), None, None),  # must match the whole value
    ((("multiWild", "foo1bar2baz"),), 10, "multiWild_foo*bar*baz"),
    ((("nestedWild", "val1"), ("wild", "goose")), 20, "nestedWild_val1.wild_goo*"),
])
def test_wildcards(
    load: Callable[[str], RateLimitConfig],
    entries: tuple[tuple[str, str], ...], limit: int | None, stats: str | None,
) -> None:
    """``*`` matches any run of characters anywhere; exact > wildcard > bare key."""
    domain = load("wildcard.yaml").domain("wild-domain")
    assert domain is not None
    node = domain.find(entries)
    if limit is None:
        assert node is None
        return
    assert node is not None and node.limits[0].requests_per_unit == limit
    assert node.stats_key == stats


def test_descriptor_paths(load: Callable[[str], RateLimitConfig]) -> None:
    """descriptor_paths lists every path to a node with a limit, as written, in config order."""
    config = load("basic.yaml")
    assert config.domains == ("test-domain",)
    paths = config.descriptor_paths("test-domain")
    assert paths[:3] == [
        (("key1", "value1"), ("subkey1", None)),
        (("key1", "value1"), ("subkey1", "subvalue1")),
        (("key2", None),),
    ]
    assert (("key2", "value3"),) not in paths  # whitelist: no limit
    assert (("key5", "value5"), ("subkey5", "subvalue5")) in paths
    assert (("key6", None),) in paths  # unlimited is still a rate_limit
    assert load("wildcard.yaml").descriptor_paths("wild-domain")[0] == (("wild", "foo*"),)


def test_directory_loads_every_file(configs: Path) -> None:
    """A directory PATH loads each YAML file as its own domain."""
    config = load_config(configs)
    assert {"test-domain", "wild-domain", "ext", "feat"} <= set(config.domains)


def test_extensions(load: Callable[[str], RateLimitConfig]) -> None:
    """``rate_limits`` adds limits beside ``rate_limit``; ``algorithm`` picks the window."""
    domain = load("extensions.yaml").domain("ext")
    assert domain is not None
    node = domain.find((("api_key", "abc"),))
    assert node is not None
    assert [(lim.unit, lim.requests_per_unit) for lim in node.limits] == [
        ("second", 2), ("minute", 3)
    ]
    sliding = domain.find((("sliding", "x"),))
    assert sliding is not None and sliding.limits[0].algorithm is Algorithm.SLIDING_WINDOW


def test_unit_case_insensitive(from_text: Callable[[str], RateLimitConfig]) -> None:
    """Units are case-insensitive (``SECOND`` works, as in the reference)."""
    config = from_text("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: SECOND, "
                       "requests_per_unit: 3}\n")
    domain = config.domain("d")
    assert domain is not None
    node = domain.find((("k", "v"),))
    assert node is not None and node.limits[0].seconds == 1


def test_missing_requests_per_unit_blocks(from_text: Callable[[str], RateLimitConfig]) -> None:
    """As in the reference, an absent requests_per_unit is 0, which blocks everything."""
    domain = from_text("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n"
                       ).domain("d")
    assert domain is not None
    node = domain.find((("k", "v"),))
    assert node is not None and node.limits[0].requests_per_unit == 0


# One YAML file per error case: (file, exact message, line of the error or None).
ERRORS = [
    ("empty_domain.yaml", "config file cannot have empty domain", 1),
    ("empty_key.yaml", "descriptor has empty key", 3),
    ("duplicate_key.yaml", "duplicate descriptor composite key 'test-domain.key1_value1'", 5),
    ("bad_limit_unit.yaml", "invalid rate limit unit 'foo'", 5),
    ("replaces_self.yaml", "replaces should not contain name of same descriptor", 9),
    ("replaces_empty.yaml", "should not have an empty replaces entry", 9),
    ("misspelled_key.yaml", "config error, unknown key 'ratelimit'", 4),
    ("misspelled_key2.yaml", "config error, unknown key 'requestsperunit'", 6),
    ("non_string_key.yaml", "config error, key is not of type string: 0.25", 1),
    ("non_map_list.yaml", "config error, yaml file contains list of type other than map: a", 2),
    ("unlimited_with_unit.yaml", "should not specify rate limit unit when unlimited", 6),
    ("missing_unit.yaml", "invalid rate limit unit ''", 4),
    ("share_threshold_without_wildcard.yaml",
     "share_threshold can only be used with a value containing a wildcard '*'", 5),
    ("bad_algorithm.yaml",
     "invalid rate limit algorithm 'token_bucket' (fixed_window or sliding_window)", 4),
    ("duplicate_unit.yaml", "duplicate rate limit unit 'second' on one descriptor", 6),
    ("negative_requests_per_unit.yaml",
     "config error, requests_per_unit must be an integer from 0 to 4294967295", 4),
]


@pytest.mark.parametrize(("name", "message", "line"), ERRORS, ids=[e[0] for e in ERRORS])
def test_config_errors(configs: Path, name: str, message: str, line: int | None) -> None:
    """Each invalid file fails with the reference's text, prefixed with the file name."""
    with pytest.raises(ConfigError) as info:
        load_config(configs / "errors" / name)
    err = info.value
    assert err.message == message
    assert str(err).startswith(f"{name}: {message}")
    assert err.file == name
    assert err.line == line


def test_bad_yaml(configs: Path) -> None:
    """Unparseable YAML is reported as 'error loading config file: ...' with its line."""
    with pytest.raises(ConfigError) as info:
        load_config(configs / "errors" / "bad_yaml.yaml")
    assert str(info.value).startswith("bad_yaml.yaml: error loading config file: ")
    assert info.value.line == 2


def test_duplicate_domain(configs: Path) -> None:
    """The same domain in two files is an error naming the second file."""
    with pytest.raises(ConfigError) as info:
        load_config(configs / "dup_domain")
    assert str(info.value).startswith(
        "duplicate_domain.yaml: duplicate domain 'test-domain' in config file"
    )


def test_extension_keys_do_not_loosen_validation(
    from_text: Callable[[str], RateLimitConfig],
) -> None:
    """A misspelt extension key is still an unknown key."""
    with pytest.raises(ConfigError, match=r"unknown key 'rate_limitz'"):
        from_text("domain: d\ndescriptors:\n  - key: k\n    rate_limitz: []\n")
