"""The CA directory: self-signed init, Istio plug-in CA adoption, modes, no overwrite."""

from __future__ import annotations

import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controlplane.ca import CANotInitialized, InvalidCA, SpiffeId, init_ca, load_ca

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
Factory = Callable[..., Any]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_root_with_private_modes(tmp_path: Path) -> None:
    """init writes Istio's layout; the key is 0600 and the directory 0700."""
    ca_dir = tmp_path / "ca"
    result = init_ca(ca_dir, "cluster.local", clock=lambda: NOW)
    assert result.outcome == "created"
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca-cert.pem", "ca-key.pem", "ca.json", "cert-chain.pem", "root-cert.pem"]
    assert _mode(ca_dir / "ca-key.pem") == 0o600
    assert _mode(ca_dir) == 0o700
    assert (ca_dir / "ca-cert.pem").read_bytes() == (ca_dir / "root-cert.pem").read_bytes()


def test_init_twice_keeps_the_existing_root(tmp_path: Path) -> None:
    """A second init changes nothing: same root, same key bytes."""
    ca_dir = tmp_path / "ca"
    first = init_ca(ca_dir, "cluster.local", clock=lambda: NOW)
    key = (ca_dir / "ca-key.pem").read_bytes()
    second = init_ca(ca_dir, "cluster.local", clock=lambda: NOW)
    assert second.outcome == "existing"
    assert second.ca.root == first.ca.root
    assert (ca_dir / "ca-key.pem").read_bytes() == key


def test_init_with_another_trust_domain_is_refused(tmp_path: Path) -> None:
    """Re-running init with a different trust domain fails instead of re-rooting the mesh."""
    init_ca(tmp_path, "cluster.local", clock=lambda: NOW)
    with pytest.raises(InvalidCA, match=r"cluster\.local"):
        init_ca(tmp_path, "other.example", clock=lambda: NOW)


def test_load_reads_back_what_init_wrote(tmp_path: Path) -> None:
    """load_ca returns a self-signed CA for the initialised trust domain."""
    created = init_ca(tmp_path, "mesh.example", clock=lambda: NOW).ca
    loaded = load_ca(tmp_path)
    assert (loaded.trust_domain, loaded.root, loaded.self_signed) == (
        "mesh.example", created.root, True)


def test_load_without_init_says_what_to_run(tmp_path: Path) -> None:
    """An empty directory raises CANotInitialized naming ``mixer ca init``."""
    with pytest.raises(CANotInitialized, match="mixer ca init"):
        load_ca(tmp_path)


@pytest.mark.parametrize("chain_includes_signer", [False, True])
def test_plugin_ca_is_adopted_and_signs_under_the_users_root(
    tmp_path: Path, chain_includes_signer: bool, plugin_writer: Factory,
) -> None:
    """Plug-in files: ca-cert signs, chain = leaf + intermediate, root-cert is the anchor."""
    root, inter = plugin_writer(tmp_path, chain_includes_signer=chain_includes_signer)
    result = init_ca(tmp_path, "cluster.local", clock=lambda: NOW)
    assert result.outcome == "plugged"
    assert _mode(tmp_path / "ca-key.pem") == 0o600
    ca = load_ca(tmp_path)
    assert (ca.signer, ca.root, ca.self_signed) == (inter, root, False)
    issued = ca.issue(SpiffeId("cluster.local", "ns", "sa"), now=NOW)
    assert issued.chain[1:] == (inter,)
    assert issued.root == root


def test_incomplete_plugin_layout_is_refused(tmp_path: Path, plugin_writer: Factory) -> None:
    """ca-cert.pem without ca-key.pem is an error that lists what is missing."""
    plugin_writer(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(InvalidCA, match=r"missing ca-key\.pem"):
        init_ca(tmp_path, "cluster.local", clock=lambda: NOW)


def test_plugin_with_foreign_root_is_refused(
    tmp_path: Path, plugin_writer: Factory, ca_factory: Factory, pem: Factory,
) -> None:
    """A root-cert.pem that did not issue the intermediate fails at init."""
    plugin_writer(tmp_path)
    other, _ = ca_factory("Someone Else")
    (tmp_path / "root-cert.pem").write_bytes(pem(other))
    with pytest.raises(InvalidCA, match="broken chain"):
        init_ca(tmp_path, "cluster.local", clock=lambda: NOW)


def test_garbage_key_error_does_not_echo_the_file(tmp_path: Path,
                                                  plugin_writer: Factory) -> None:
    """An unreadable key file is reported by name only, never by content."""
    plugin_writer(tmp_path)
    (tmp_path / "ca-key.pem").write_text("-----BEGIN PRIVATE KEY-----\nSECRETBYTES\n")
    with pytest.raises(InvalidCA) as info:
        init_ca(tmp_path, "cluster.local", clock=lambda: NOW)
    assert "SECRETBYTES" not in str(info.value) and "ca-key.pem" in str(info.value)
