"""controlplane.envoy.ratelimit_actions: route actions derived from the ratelimit config."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.envoy.ratelimit_actions import (
    action_for,
    actions_for_paths,
    actions_from_config,
    evaluate,
    path_matches,
    rate_limits_block,
    sample_request,
)
from envoy_mixer.common.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_LIMITS = REPO / "examples" / "ratelimit.yaml"


def test_every_example_descriptor_path_is_reachable() -> None:
    """For each descriptor path with a limit, some generated action list produces exactly it."""
    from ratelimit.config import load_config

    config = load_config(EXAMPLE_LIMITS)
    for domain in config.domains:
        paths = config.descriptor_paths(domain)
        actions = actions_from_config(EXAMPLE_LIMITS, domain)
        assert paths
        for path in paths:
            sent = [evaluate(a, sample_request(path)) for a in actions]
            assert any(d is not None and path_matches(path, d) for d in sent), path


def test_keys_map_to_typed_actions() -> None:
    """Each documented key becomes the Envoy action of the convention table."""
    generic = action_for("generic_key", "api")
    assert generic.generic_key.descriptor_value == "api"
    assert action_for("remote_address", None).HasField("remote_address")
    assert action_for("destination_cluster", None).HasField("destination_cluster")
    method = action_for("method", None).request_headers
    assert (method.header_name, method.descriptor_key) == (":method", "method")
    header = action_for("header.x-tenant", None).request_headers
    assert (header.header_name, header.descriptor_key) == ("x-tenant", "header.x-tenant")
    match = action_for("path_prefix", "/api").header_value_match
    assert (match.descriptor_key, match.descriptor_value) == ("path_prefix", "/api")
    assert match.expect_match.value is True
    assert [(h.name, h.string_match.prefix) for h in match.headers] == [(":path", "/api")]


def test_rate_limits_block_is_one_entry_per_actions_list() -> None:
    """Every actions list becomes one route RateLimit entry, actions in order."""
    actions = actions_for_paths([(("generic_key", "a"), ("remote_address", None))])
    (entry,) = rate_limits_block(actions)
    assert [a.WhichOneof("action_specifier") for a in entry.actions] == [
        "generic_key", "remote_address"]


def test_duplicate_paths_give_one_actions_list() -> None:
    """Two paths needing the same actions yield them once."""
    path = (("remote_address", None),)
    assert len(actions_for_paths([path, path])) == 1


def test_path_prefix_descriptor_only_sent_for_matching_paths() -> None:
    """A path_prefix limit is not sent for other paths (the match drops the descriptor)."""
    (actions,) = actions_for_paths([(("path_prefix", "/api/limited"), ("remote_address", None))])
    request = sample_request((("path_prefix", "/other"),))
    assert evaluate(actions, request) is None
    hit = sample_request((("path_prefix", "/api/limited"),))
    assert evaluate(actions, hit) == (("path_prefix", "/api/limited"),
                                      ("remote_address", "192.0.2.10"))


def test_absent_header_drops_the_descriptor() -> None:
    """A request_headers action whose header is missing drops the whole descriptor, as Envoy."""
    (actions,) = actions_for_paths([(("header.x-tenant", None),)])
    assert evaluate(actions, sample_request((("method", None),))) is None


def test_unknown_descriptor_key_is_an_error_naming_the_path() -> None:
    """A key Envoy cannot send is rejected with the key, the known keys and the path."""
    with pytest.raises(ConfigError) as info:
        actions_for_paths([(("tenant", "a"),)], file="limits.yaml")
    text = str(info.value)
    assert text.startswith("limits.yaml: descriptor key 'tenant' has no Envoy action")
    assert "field tenant=a" in text


def test_generic_key_needs_a_literal_value() -> None:
    """generic_key without a value (or with a wildcard) cannot be produced by Envoy."""
    with pytest.raises(ConfigError, match="generic_key needs a literal value"):
        actions_for_paths([(("generic_key", None),)])


def test_domain_absent_from_the_config_has_no_actions() -> None:
    """A domain the config does not define derives no actions."""
    assert actions_from_config(EXAMPLE_LIMITS, "no-such-domain") == []
