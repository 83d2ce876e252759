"""Workload files and the file-SDS layout: names, modes, atomic swaps."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.ca import SpiffeId, create_root, write_bundle
from controlplane.ca.files import atomic_write, bundle_files, read_leaf, stage
from controlplane.ca.sds import SECRET_TYPE, sds_file_config

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ID = SpiffeId("cluster.local", "default", "web")
NAMES = ["ROOTCA.json", "cert-chain.pem", "default.json", "key.pem", "root-cert.pem"]


def _visible(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".."))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_uses_istio_and_sds_names_with_private_keys_0600(tmp_path: Path) -> None:
    """Istio's cert-chain/key/root-cert plus default.json/ROOTCA.json; key files are 0600."""
    issued = create_root("cluster.local", now=NOW).issue(ID, now=NOW)
    write_bundle(tmp_path, issued)
    assert _visible(tmp_path) == NAMES
    assert _mode(tmp_path / "key.pem") == 0o600
    assert _mode(tmp_path / "default.json") == 0o600
    assert _mode(tmp_path / "cert-chain.pem") == 0o644
    assert read_leaf(tmp_path) == issued.certificate
    assert (tmp_path / "root-cert.pem").read_bytes() == issued.root_pem


def test_sds_documents_are_discovery_responses_with_inline_secrets(tmp_path: Path) -> None:
    """default.json holds the chain and key as secret ``default``; ROOTCA.json the root."""
    issued = create_root("cluster.local", now=NOW).issue(ID, now=NOW)
    write_bundle(tmp_path, issued)
    default = json.loads((tmp_path / "default.json").read_text())["resources"]
    assert [r["@type"] for r in default] == [SECRET_TYPE]
    assert default[0]["name"] == "default"
    tls = default[0]["tls_certificate"]
    assert tls["certificate_chain"]["inline_string"].encode() == issued.chain_pem
    assert tls["private_key"]["inline_string"].encode() == issued.key_pem()
    rootca = json.loads((tmp_path / "ROOTCA.json").read_text())["resources"][0]
    assert rootca["name"] == "ROOTCA"
    assert rootca["validation_context"]["trusted_ca"]["inline_string"].encode() == issued.root_pem


def test_sds_file_config_points_at_the_file_and_watches_the_directory() -> None:
    """The SdsSecretConfig names the secret's file and watches its directory for the swap."""
    assert sds_file_config("/etc/certs/", "default") == {
        "name": "default",
        "sds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": "/etc/certs/default.json", "watched_directory": {"path": "/etc/certs/"}}},
    }


def test_staged_generation_is_invisible_until_commit(tmp_path: Path) -> None:
    """After stage() the old set is still what every path shows; commit() shows the new one."""
    ca = create_root("cluster.local", now=NOW)
    old, new = ca.issue(ID, now=NOW), ca.issue(ID, now=NOW)
    write_bundle(tmp_path, old)
    staged = stage(tmp_path, bundle_files(new))
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == (tmp_path / "..data" / name).read_bytes()
    assert read_leaf(tmp_path) == old.certificate
    staged.commit()
    assert read_leaf(tmp_path) == new.certificate
    assert (tmp_path / "key.pem").read_bytes() == new.key_pem()


def test_old_generations_are_pruned_keeping_the_previous_one(tmp_path: Path) -> None:
    """After many swaps only the current and the previous generation remain on disk."""
    ca = create_root("cluster.local", now=NOW)
    for _ in range(4):
        write_bundle(tmp_path, ca.issue(ID, now=NOW))
    gens = [p for p in tmp_path.iterdir() if p.name.startswith("..gen-")]
    assert len(gens) == 2
    assert os.readlink(tmp_path / "..data") in {g.name for g in gens}


def test_readers_always_see_a_complete_matching_set_during_swaps(tmp_path: Path) -> None:
    """A reader racing 40 swaps always parses default.json with a key matching its cert."""
    ca = create_root("cluster.local", now=NOW)
    issued = [ca.issue(ID, now=NOW) for _ in range(40)]
    write_bundle(tmp_path, issued[0])
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                secret = json.loads((tmp_path / "default.json").read_text())["resources"][0]
                tls = secret["tls_certificate"]
                cert = x509.load_pem_x509_certificate(
                    tls["certificate_chain"]["inline_string"].encode())
                key = serialization.load_pem_private_key(
                    tls["private_key"]["inline_string"].encode(), None)
                if cert.public_key() != key.public_key():
                    problems.append("key does not match cert")
                x509.load_pem_x509_certificates((tmp_path / "cert-chain.pem").read_bytes())
                serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
                reads += 1
            except Exception as exc:
                problems.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for item in issued[1:]:
            write_bundle(tmp_path, item)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 0
    assert read_leaf(tmp_path) == issued[-1].certificate


def test_atomic_write_sets_mode_and_replaces(tmp_path: Path) -> None:
    """atomic_write leaves exactly the new bytes with the asked mode and no temp file."""
    path = tmp_path / "k.pem"
    path.write_bytes(b"old")
    atomic_write(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_plain_files_from_elsewhere_are_replaced_by_links(tmp_path: Path) -> None:
    """A directory with plain cert files (e.g. copied by hand) is converted to the link layout."""
    (tmp_path / "cert-chain.pem").write_text("stale")
    write_bundle(tmp_path, create_root("cluster.local", now=NOW).issue(ID, now=NOW))
    assert (tmp_path / "cert-chain.pem").is_symlink()
    assert read_leaf(tmp_path) is not None
