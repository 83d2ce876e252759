"""Loading PeerAuthentication YAML: fields, Istio's validation, exact error texts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.security import effective_mtls, load_peer_authentications, load_text
from envoy_mixer.common.errors import ConfigError

DATA = Path(__file__).parent / "testdata"


def test_valid_file_loads_every_field() -> None:
    """v1 and v1beta1, List items, selector, ports, creationTimestamp; other kinds skipped."""
    loaded = load_peer_authentications(DATA / "valid.yaml")
    assert [p.key for p in loaded] == ["istio-system/default", "shop/web", "default/ns-wide"]
    mesh, web, ns_wide = loaded
    assert (mesh.mode, mesh.selector, mesh.line) == ("STRICT", (), 1)
    assert web.selector == (("app", "web"),)
    assert web.port_modes == ((8080, "DISABLE"), (9090, "UNSET"))
    assert web.created == datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert (ns_wide.mode, ns_wide.namespace) == ("UNSET", "default")


def test_loaded_policies_resolve_end_to_end() -> None:
    """The loaded file gives shop/web PERMISSIVE, DISABLE on 8080, inherited on 9090."""
    result = effective_mtls(load_peer_authentications(DATA / "valid.yaml"), namespace="shop",
                            labels={"app": "web"})
    assert (result.mode, result.for_port(8080), result.for_port(9090)) == (
        "PERMISSIVE", "DISABLE", "PERMISSIVE")
    other = effective_mtls(load_peer_authentications(DATA / "valid.yaml"), namespace="shop",
                           labels={"app": "db"})
    assert other.mode == "STRICT"


def test_directory_loads_in_file_name_order(tmp_path: Path) -> None:
    """A directory is every *.yaml in it, by name."""
    (tmp_path / "b.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b}\n")
    (tmp_path / "a.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n")
    assert [p.name for p in load_peer_authentications(tmp_path)] == ["a", "b"]


def test_default_namespace_applies_to_policies_without_one() -> None:
    """metadata.namespace defaults to the given default namespace."""
    text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n"
    assert load_text(text, default_namespace="prod")[0].namespace == "prod"


ERRORS = {
    "bad_mode.yaml": "bad_mode.yaml: Input should be 'UNSET', 'DISABLE', 'PERMISSIVE' or "
                     "'STRICT' (line 7, field spec.mtls.mode)",
    "unknown_key.yaml": "unknown_key.yaml: unknown key 'mutualTls' (line 8, field spec.mutualTls)",
    "port_level_without_selector.yaml":
        "port_level_without_selector.yaml: mesh/namespace peer authentication cannot have port "
        "level mTLS (add a selector) (line 8, field spec.portLevelMtls)",
    "empty_port_level.yaml": "empty_port_level.yaml: port level mTLS, if defined, must have at "
                             "least one element (line 9, field spec.portLevelMtls)",
    "port_out_of_range.yaml": "port_out_of_range.yaml: port must be in range 1..65535, got 70000 "
                              "(line 11, field spec.portLevelMtls[70000])",
    "wildcard_selector.yaml": "wildcard_selector.yaml: wildcard is not supported in selector "
                              "(line 8, field spec.selector.matchLabels.app)",
    "bad_api_version.yaml": "bad_api_version.yaml: unsupported apiVersion "
                            "'security.istio.io/v1alpha1' for PeerAuthentication (expected "
                            "security.istio.io/v1 or security.istio.io/v1beta1) (line 1, field "
                            "apiVersion)",
    "duplicate.yaml": "duplicate.yaml: duplicate PeerAuthentication shop/web (first defined at "
                      "duplicate.yaml:1) (line 10, field metadata.name)",
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_config_error_text(name: str) -> None:
    """Each invalid file fails with this exact message (file, line, field)."""
    with pytest.raises(ConfigError) as info:
        load_peer_authentications(DATA / name)
    assert str(info.value) == ERRORS[name]


def test_all_errors_of_a_load_are_reported_together(tmp_path: Path) -> None:
    """Two bad documents give two errors in one ConfigErrors."""
    text = (DATA / "bad_mode.yaml").read_text() + "---\n" + (DATA / "unknown_key.yaml").read_text()
    with pytest.raises(ConfigError) as info:
        load_text(text.replace("name: default", "name: a", 1), "two.yaml")
    assert "spec.mtls.mode" in str(info.value) and "spec.mutualTls" in str(info.value)


def test_naive_creation_timestamp_is_refused() -> None:
    """A creationTimestamp without a zone is ambiguous and rejected."""
    text = ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: x, creationTimestamp: '2024-01-01T00:00:00'}\n")
    with pytest.raises(ConfigError, match=r"metadata\.creationTimestamp"):
        load_text(text)
