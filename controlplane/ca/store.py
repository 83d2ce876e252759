"""The CA directory: Istio's plug-in CA layout, for our own root and for a user's.

Files (the names of Istio's ``cacerts`` secret)::

    ca-cert.pem      the signer's certificate
    ca-key.pem       the signer's key (0600; never printed, logged or served)
    root-cert.pem    the trust anchor every workload verifies against
    cert-chain.pem   certificates between the signer and the root (empty for our own root)
    ca.json          our only addition: {"trustDomain": "..."} (Istio keeps it in mesh config)

``init`` either creates a self-signed root (all of the above, ``ca-cert.pem`` being the root)
or, when the user dropped ``ca-cert.pem``/``ca-key.pem``/``root-cert.pem`` (and optionally
``cert-chain.pem``) there, e.g. from cert-manager, checks them and adopts them. It never
overwrites an existing signer. The directory is made 0700.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controlplane.ca.authority import (
    CertificateAuthority,
    SigningKey,
    create_root,
    pem_certificates,
)
from controlplane.ca.errors import CANotInitialized, InvalidCA
from controlplane.ca.files import PUBLIC, SECRET, atomic_write

__all__ = [
    "CA_CERT",
    "CA_CHAIN",
    "CA_CONFIG",
    "CA_KEY",
    "CA_ROOT",
    "InitResult",
    "init_ca",
    "load_ca",
]

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CA_ROOT = "root-cert.pem"
CA_CHAIN = "cert-chain.pem"
CA_CONFIG = "ca.json"

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init_ca`` did: ``created`` (new root), ``plugged`` (adopted) or ``existing``."""

    outcome: str
    ca: CertificateAuthority


def _read_certs(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidCA(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise InvalidCA(f"{path.name}: not a PEM certificate file") from None


def _read_one_cert(path: Path) -> x509.Certificate:
    certs = _read_certs(path)
    if len(certs) != 1:
        raise InvalidCA(f"{path.name}: expected exactly one certificate, found {len(certs)}")
    return certs[0]


def _read_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidCA(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Never echo the parser's message: it could quote bytes of the key.
        raise InvalidCA(f"{path.name}: not an unencrypted PEM private key") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InvalidCA(f"{path.name}: only EC and RSA keys can sign")
    return key


def _load_parts(directory: Path, trust_domain: str) -> CertificateAuthority:
    chain_path = directory / CA_CHAIN
    return CertificateAuthority.from_parts(
        trust_domain=trust_domain,
        signer=_read_one_cert(directory / CA_CERT),
        signer_key=_read_key(directory / CA_KEY),
        root=_read_one_cert(directory / CA_ROOT),
        intermediates=_read_certs(chain_path) if chain_path.exists() else (),
    )


def _read_trust_domain(directory: Path) -> str | None:
    path = directory / CA_CONFIG
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["trustDomain"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidCA(f"{CA_CONFIG}: expected {{\"trustDomain\": \"...\"}}") from None
    if not isinstance(value, str):
        raise InvalidCA(f"{CA_CONFIG}: trustDomain must be a string")
    return value


def load_ca(directory: Path) -> CertificateAuthority:
    """Load and check the CA in ``directory``; CANotInitialized if ``init`` never ran."""
    trust_domain = _read_trust_domain(directory)
    if trust_domain is None:
        raise CANotInitialized(f"no CA in {directory}: run 'mixer ca init --dir {directory}'")
    return _load_parts(directory, trust_domain)


def init_ca(directory: Path, trust_domain: str, *, clock: Clock) -> InitResult:
    """Create the mesh root in ``directory``, adopt a plug-in CA there, or keep what exists."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    existing = _read_trust_domain(directory)
    if existing is not None:
        if existing != trust_domain:
            raise InvalidCA(f"{directory} already holds a CA for trust domain '{existing}', "
                            f"not '{trust_domain}'")
        return InitResult("existing", _load_parts(directory, existing))
    present = [n for n in (CA_CERT, CA_KEY, CA_ROOT) if (directory / n).exists()]
    if present:
        missing = [n for n in (CA_CERT, CA_KEY, CA_ROOT) if n not in present]
        if missing:
            raise InvalidCA(f"incomplete plug-in CA in {directory}: missing {', '.join(missing)}"
                            f" (found {', '.join(present)})")
        ca = _load_parts(directory, trust_domain)
        os.chmod(directory / CA_KEY, SECRET)
        outcome = "plugged"
    else:
        ca = create_root(trust_domain, now=clock())
        key_pem = ca.signer_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # The key first: if anything fails later, a rerun finds an incomplete plug-in layout
        # and says so instead of silently minting a second root.
        atomic_write(directory / CA_KEY, key_pem, SECRET)
        root_pem = pem_certificates((ca.root,))
        atomic_write(directory / CA_CERT, root_pem, PUBLIC)
        atomic_write(directory / CA_ROOT, root_pem, PUBLIC)
        atomic_write(directory / CA_CHAIN, b"", PUBLIC)
        outcome = "created"
    # ca.json last: it marks the directory as initialised.
    atomic_write(directory / CA_CONFIG,
                 (json.dumps({"trustDomain": trust_domain}) + "\n").encode(), PUBLIC)
    return InitResult(outcome, ca)
