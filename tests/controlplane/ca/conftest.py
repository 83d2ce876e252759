"""Test-only PKI: a user's own root and intermediate (as cert-manager would make), as fixtures.

- ``make_ca(cn, issuer=...)``: a CA certificate and key;
- ``write_plugin(dir)``: Istio's plug-in CA files (root -> intermediate) in ``dir``;
- ``cert_pem(*certs)``: PEM text of certificates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of ``key``."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(*certs: x509.Certificate) -> bytes:
    """PEM of ``certs``, concatenated."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_ca(cn: str, *, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
            now: datetime = NOW, days: int = 3650, ca: bool = True,
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate named ``cn``: self-signed, or signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signing_key.public_key()), critical=False)
    )
    return builder.sign(signing_key, hashes.SHA256()), key


def write_plugin(directory: Path, *, chain_includes_signer: bool = False,
                 ) -> tuple[x509.Certificate, x509.Certificate]:
    """Write an Istio plug-in CA (root -> intermediate) into ``directory``; (root, ca-cert)."""
    root, root_key = make_ca("User Root")
    inter, inter_key = make_ca("Mesh Intermediate", issuer=(root, root_key), days=1000)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root-cert.pem").write_bytes(cert_pem(root))
    (directory / "ca-cert.pem").write_bytes(cert_pem(inter))
    (directory / "ca-key.pem").write_bytes(key_pem(inter_key))
    chain = (inter, root) if chain_includes_signer else (inter,)
    (directory / "cert-chain.pem").write_bytes(cert_pem(*chain))
    return root, inter


@pytest.fixture
def ca_factory() -> Callable[..., tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """``make_ca`` as a fixture."""
    return make_ca


@pytest.fixture
def plugin_writer() -> Callable[..., tuple[x509.Certificate, x509.Certificate]]:
    """``write_plugin`` as a fixture."""
    return write_plugin


@pytest.fixture
def pem() -> Callable[..., bytes]:
    """``cert_pem`` as a fixture."""
    return cert_pem

