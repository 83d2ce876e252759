"""``mixer ca init|issue|rotate`` through the real ``mixer`` entry point."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from controlplane.ca.files import read_leaf
from envoy_mixer.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["ca", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _no_secret(text: str) -> None:
    assert "PRIVATE KEY" not in text and "BEGIN" not in text


def test_init_then_issue_writes_the_workload_set(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """init + issue produce a cert for spiffe://cluster.local/ns/NS/sa/SA and print no secret."""
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    code, text, err = _run(capsys, "init", "--dir", str(ca_dir))
    assert code == 0 and "created a new mesh root" in text
    code, text2, err2 = _run(capsys, "issue", "--dir", str(ca_dir), "--namespace", "shop",
                             "--service-account", "cart", "--ttl", "90m", "--out", str(out))
    assert code == 0, err2
    assert "spiffe://cluster.local/ns/shop/sa/cart" in text2
    for chunk in (text, err, text2, err2):
        _no_secret(chunk)
    leaf = read_leaf(out)
    assert leaf is not None
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/cart"]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 5400
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600


def test_init_twice_does_not_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The second init exits 0, says so, and leaves the root and key bytes untouched."""
    _run(capsys, "init", "--dir", str(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, text, _ = _run(capsys, "init", "--dir", str(tmp_path))
    assert code == 0 and "already initialised" in text
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_issue_defaults_to_the_current_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --out the files land in the working directory."""
    _run(capsys, "init", "--dir", str(tmp_path / "ca"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, _ = _run(capsys, "issue", "--dir", str(tmp_path / "ca"), "--namespace", "a",
                      "--service-account", "b")
    assert code == 0
    assert (work / "cert-chain.pem").exists() and (work / "default.json").exists()


def test_init_adopts_a_plugin_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 plugin_writer: Callable[..., Any]) -> None:
    """init on a directory with Istio's plug-in files adopts them; issue chains to their root."""
    root, inter = plugin_writer(tmp_path / "ca")
    code, text, _ = _run(capsys, "init", "--dir", str(tmp_path / "ca"), "--trust-domain",
                         "corp.example")
    assert code == 0 and "plug-in CA" in text and "corp.example" in text
    code, text, _ = _run(capsys, "issue", "--dir", str(tmp_path / "ca"), "--namespace", "a",
                         "--service-account", "b", "--out", str(tmp_path / "w"))
    assert code == 0 and "spiffe://corp.example/ns/a/sa/b" in text
    chain = x509.load_pem_x509_certificates((tmp_path / "w" / "cert-chain.pem").read_bytes())
    assert chain[1:] == [inter]
    assert x509.load_pem_x509_certificate((tmp_path / "w" / "root-cert.pem").read_bytes()) == root


@pytest.mark.parametrize("argv", [
    ["issue", "--namespace", "a", "--service-account", "b", "--ttl", "soon"],
    ["issue", "--namespace", "a", "--service-account", "b", "--ttl", "91d"],
    ["issue", "--namespace", "a"],
    ["init", "--bogus"],
])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed TTL, a missing flag or an unknown flag is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(["ca", *argv])
    assert info.value.code == 2


def test_issue_without_init_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """issue against an empty directory fails with exit 1 and a hint on stderr."""
    code, out, err = _run(capsys, "issue", "--dir", str(tmp_path), "--namespace", "a",
                          "--service-account", "b", "--out", str(tmp_path / "w"))
    assert code == 1 and out == "" and "mixer ca init" in err


def test_invalid_identity_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A namespace that is not a DNS label is refused with exit 1."""
    _run(capsys, "init", "--dir", str(tmp_path))
    code, _, err = _run(capsys, "issue", "--dir", str(tmp_path), "--namespace", "Bad/NS",
                        "--service-account", "b", "--out", str(tmp_path / "w"))
    assert code == 1 and "invalid namespace" in err


def test_rotate_once_issues_only_when_due(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """rotate --once writes a missing set, and a second run keeps the fresh one."""
    _run(capsys, "init", "--dir", str(tmp_path / "ca"))
    argv = ["rotate", "--once", "--dir", str(tmp_path / "ca"), "--namespace", "a",
            "--service-account", "b", "--out", str(tmp_path / "w")]
    assert _run(capsys, *argv)[0] == 0
    serial = read_leaf(tmp_path / "w").serial_number  # type: ignore[union-attr]
    code, out, err = _run(capsys, *argv)
    assert code == 0
    assert read_leaf(tmp_path / "w").serial_number == serial  # type: ignore[union-attr]
    _no_secret(out + err)


def test_init_into_an_unwritable_place_exits_1(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A CA directory that cannot be created is a failure (exit 1), not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = _run(capsys, "init", "--dir", str(blocker / "ca"))
    assert code == 1 and out == "" and "cannot write" in err


@pytest.mark.slow
def test_rotate_runs_until_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The long-running rotate writes the set, then exits 0 on SIGTERM without printing keys."""
    import signal
    import subprocess
    import sys
    import time

    _run(capsys, "init", "--dir", str(tmp_path / "ca"))
    out = tmp_path / "w"
    proc = subprocess.Popen(
        [sys.executable, "-m", "envoy_mixer.cli", "ca", "rotate", "--dir", str(tmp_path / "ca"),
         "--namespace", "a", "--service-account", "b", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[3])
    try:
        for _ in range(200):
            if read_leaf(out) is not None:
                break
            time.sleep(0.05)
        assert read_leaf(out) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "ca_certificate_rotated" in stderr
    _no_secret(stdout + stderr)
