"""Writing certificates to disk so that a reader never sees half of a rotation.

Two layers:

- :func:`atomic_write`: one file, written to a temporary name in the same directory, synced,
  then renamed over the target (keys get mode 0600 from the first byte).
- :func:`stage` / :meth:`Staged.commit`: a whole set of files in the Kubernetes atomic-writer
  layout that Envoy's file SDS ``watched_directory`` expects::

      out/..gen-XXXX/{cert-chain.pem,key.pem,root-cert.pem,default.json,ROOTCA.json}
      out/..data -> ..gen-XXXX              (swapped by one rename)
      out/cert-chain.pem -> ..data/cert-chain.pem    (and so on for every file)

  A new generation is written completely into a fresh directory; ``commit`` points a temporary
  link at it and renames that link over ``..data``. Each path under ``out`` therefore resolves
  to the old set or to the new set at every instant, and Envoy, which watches ``out`` for the
  rename, re-reads the SDS files once. The previous generation is kept until the next swap so a
  reader that resolved ``..data`` just before the rename can still finish reading.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from controlplane.ca.authority import IssuedCertificate
from controlplane.ca.sds import (
    ROOTCA_SECRET,
    WORKLOAD_SECRET,
    tls_certificate_document,
    validation_context_document,
)

__all__ = [
    "CERT_CHAIN",
    "DATA_LINK",
    "KEY",
    "ROOT_CERT",
    "SDS_ROOTCA",
    "SDS_WORKLOAD",
    "Staged",
    "atomic_write",
    "bundle_files",
    "read_leaf",
    "stage",
    "write_bundle",
]

#: Istio's file names for a workload's mounted certificates.
CERT_CHAIN = "cert-chain.pem"
KEY = "key.pem"
ROOT_CERT = "root-cert.pem"
#: The SDS files, named after the secret each holds.
SDS_WORKLOAD = f"{WORKLOAD_SECRET}.json"
SDS_ROOTCA = f"{ROOTCA_SECRET}.json"

DATA_LINK = "..data"
_GEN_PREFIX = "..gen-"
_TMP_LINK = "..data_tmp"

PUBLIC = 0o644
SECRET = 0o600


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` in one rename; the file has ``mode`` before any byte."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; widen (or keep) explicitly, independent of the umask.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def bundle_files(issued: IssuedCertificate) -> dict[str, tuple[bytes, int]]:
    """Every file of a workload's set: name -> (content, mode). Key-bearing files are 0600."""
    key = issued.key_pem()
    return {
        CERT_CHAIN: (issued.chain_pem, PUBLIC),
        KEY: (key, SECRET),
        ROOT_CERT: (issued.root_pem, PUBLIC),
        SDS_WORKLOAD: (tls_certificate_document(issued.chain_pem, key).encode(), SECRET),
        SDS_ROOTCA: (validation_context_document(issued.root_pem).encode(), PUBLIC),
    }


@dataclass(frozen=True, slots=True)
class Staged:
    """A complete generation written under ``out`` but not yet visible."""

    out: Path
    generation: str
    names: tuple[str, ...]

    def commit(self) -> None:
        """Make this generation the visible one (one rename), then prune older ones."""
        data = self.out / DATA_LINK
        previous = os.readlink(data) if data.is_symlink() else None
        tmp = self.out / _TMP_LINK
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self.generation, tmp)
        os.replace(tmp, data)
        for name in self.names:
            link = self.out / name
            target = f"{DATA_LINK}/{name}"
            if link.is_symlink() and os.readlink(link) == target:
                continue
            # First write (or a plain file left by something else): swap a link in atomically.
            tmp_link = self.out / f".{name}.link-tmp"
            with contextlib.suppress(FileNotFoundError):
                tmp_link.unlink()
            os.symlink(target, tmp_link)
            os.replace(tmp_link, link)
        _fsync_dir(self.out)
        keep = {self.generation, previous}
        for entry in self.out.iterdir():
            if entry.name.startswith(_GEN_PREFIX) and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def stage(out: Path, files: Mapping[str, tuple[bytes, int]]) -> Staged:
    """Write ``files`` (name -> (content, mode)) into a new hidden generation under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    generation = Path(tempfile.mkdtemp(prefix=_GEN_PREFIX, dir=out))
    try:
        # mkdtemp makes 0700; Envoy may run as another user, and the key files are 0600 anyway.
        os.chmod(generation, 0o755)
        for name, (content, mode) in files.items():
            path = generation / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(generation)
    except BaseException:
        shutil.rmtree(generation, ignore_errors=True)
        raise
    return Staged(out=out, generation=generation.name, names=tuple(files))


def write_bundle(out: Path, issued: IssuedCertificate) -> Path:
    """Write (or atomically replace) a workload's whole set under ``out``; returns ``out``."""
    stage(out, bundle_files(issued)).commit()
    return out


def read_leaf(out: Path) -> x509.Certificate | None:
    """The workload certificate currently visible in ``out``, or None if there is none."""
    try:
        data = (out / CERT_CHAIN).read_bytes()
    except FileNotFoundError:
        return None
    certs = x509.load_pem_x509_certificates(data)
    return certs[0] if certs else None
