"""The mesh certificate authority: a signer that mints SPIFFE workload certificates.

Pure logic over ``cryptography`` objects; reading and writing the CA directory lives in
:mod:`controlplane.ca.store`. Time is always passed in (``now``), never read here.

A CA is either

- **self-signed**: the mesh root (EC P-256, ``CA:true``, keyCertSign/cRLSign, 10 years, subject
  ``O=<trust domain>`` like Istio's self-signed root) signs workloads directly; or
- **plugged in** (Istio's plug-in CA): an intermediate ``ca-cert.pem``/``ca-key.pem`` signs,
  ``cert-chain.pem`` holds the certificates between it and the root, and ``root-cert.pem`` is the
  trust anchor. Workload chains are then ``workload + cert-chain.pem``.

Workload certificates carry exactly one identity, the SPIFFE URI SAN, and an empty subject (as
Istio issues them), so the SAN extension is critical (RFC 5280 4.2.1.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.ca.errors import InvalidCA, InvalidDuration
from controlplane.ca.identity import SpiffeId, validate_trust_domain

__all__ = [
    "DEFAULT_WORKLOAD_TTL",
    "MAX_WORKLOAD_TTL",
    "ROOT_VALIDITY",
    "CertificateAuthority",
    "IssuedCertificate",
    "create_root",
    "pem_certificates",
]

#: Istio's defaults: workload certificates live 24 h, at most 90 days; the root 10 years.
DEFAULT_WORKLOAD_TTL = timedelta(hours=24)
MAX_WORKLOAD_TTL = timedelta(days=90)
ROOT_VALIDITY = timedelta(days=3650)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_certificates(certs: tuple[x509.Certificate, ...]) -> bytes:
    """Concatenate certificates as PEM, in order."""
    return b"".join(_pem(c) for c in certs)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A workload's certificate, the chain Envoy serves, its key (if we made it) and the root."""

    certificate: x509.Certificate
    #: ``certificate`` followed by any intermediates (never the root).
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | None

    @property
    def chain_pem(self) -> bytes:
        """``cert-chain.pem``: the leaf, then the intermediates."""
        return pem_certificates(self.chain)

    @property
    def root_pem(self) -> bytes:
        """``root-cert.pem``: the trust anchor."""
        return _pem(self.root)

    def key_pem(self) -> bytes:
        """``key.pem`` (PKCS#8, unencrypted: Envoy reads it as is). Only for files mode 0600."""
        if self.private_key is None:
            raise ValueError("this certificate was signed from a CSR; the key is the caller's")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        # Never let a key reach a log line or a traceback through repr().
        return f"IssuedCertificate(serial={self.certificate.serial_number:x})"


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A signer for one trust domain. ``repr`` never shows the key."""

    trust_domain: str
    signer: x509.Certificate
    signer_key: SigningKey
    #: The certificates strictly between the signer and the root (issuer first); empty when
    #: the root signs directly or signs the signer.
    intermediates: tuple[x509.Certificate, ...]
    root: x509.Certificate

    def __repr__(self) -> str:
        return (f"CertificateAuthority(trust_domain={self.trust_domain!r}, "
                f"signer={self.signer.subject.rfc4514_string()!r})")

    @classmethod
    def from_parts(
        cls, *, trust_domain: str, signer: x509.Certificate, signer_key: SigningKey,
        root: x509.Certificate, intermediates: tuple[x509.Certificate, ...] = (),
    ) -> CertificateAuthority:
        """Check that the parts form a usable CA (key matches, chain links to root)."""
        validate_trust_domain(trust_domain)
        if not isinstance(signer_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise InvalidCA("ca-key.pem: only EC and RSA signing keys are supported")
        if signer.public_key() != signer_key.public_key():
            raise InvalidCA("ca-key.pem does not match ca-cert.pem")
        try:
            constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise InvalidCA("ca-cert.pem is not a CA certificate (basicConstraints CA:true)")
        try:
            usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.key_cert_sign:
                raise InvalidCA("ca-cert.pem may not sign certificates (keyUsage keyCertSign)")
        except x509.ExtensionNotFound:
            pass
        # Istio's cert-chain.pem may or may not repeat ca-cert and the root: keep only what
        # lies strictly between them, then walk signer -> those -> root checking signatures.
        between = tuple(c for c in intermediates if c not in (signer, root))
        path = (signer, *between)
        for child, parent in zip(path, (*path[1:], root), strict=True):
            if child == root:
                break
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise InvalidCA(
                    f"broken chain: '{child.subject.rfc4514_string()}' is not issued by "
                    f"'{parent.subject.rfc4514_string()}' (check cert-chain.pem and "
                    "root-cert.pem)"
                ) from None
        return cls(trust_domain=trust_domain, signer=signer, signer_key=signer_key,
                   intermediates=between, root=root)

    @property
    def self_signed(self) -> bool:
        """True when the root itself signs workloads."""
        return self.signer == self.root

    def issue(
        self, identity: SpiffeId, *, now: datetime, ttl: timedelta = DEFAULT_WORKLOAD_TTL,
    ) -> IssuedCertificate:
        """Generate a fresh EC P-256 key and a certificate for ``identity``."""
        key = _new_key()
        cert = self._sign(key.public_key(), identity, now=now, ttl=ttl)
        return IssuedCertificate(cert, (cert, *self._chain_above()), self.root, key)

    def sign_csr(
        self, csr: x509.CertificateSigningRequest, identity: SpiffeId, *, now: datetime,
        ttl: timedelta = DEFAULT_WORKLOAD_TTL,
    ) -> IssuedCertificate:
        """Sign a CSR's public key for ``identity``; every name the CSR asks for is ignored.

        The identity is the caller's decision (it authenticated the requester), as in Istio's
        CA, which takes the identity from the caller's credential and not from the CSR.
        """
        if not csr.is_signature_valid:
            raise InvalidCA("the CSR's signature is not valid")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise InvalidCA("RSA keys below 2048 bits are refused")
        elif not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise InvalidCA("only EC and RSA keys can be certified")
        cert = self._sign(public_key, identity, now=now, ttl=ttl)
        return IssuedCertificate(cert, (cert, *self._chain_above()), self.root, None)

    def _chain_above(self) -> tuple[x509.Certificate, ...]:
        return () if self.self_signed else (self.signer, *self.intermediates)

    def _sign(
        self, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, identity: SpiffeId, *,
        now: datetime, ttl: timedelta,
    ) -> x509.Certificate:
        if identity.trust_domain != self.trust_domain:
            raise InvalidCA(f"this CA signs for trust domain '{self.trust_domain}', "
                            f"not '{identity.trust_domain}'")
        if ttl <= timedelta(0) or ttl > MAX_WORKLOAD_TTL:
            raise InvalidDuration(f"workload TTL must be positive and at most "
                                  f"{MAX_WORKLOAD_TTL.days} days")
        not_after = now + ttl
        if not_after > self.signer.not_valid_after_utc:
            raise InvalidCA("the workload certificate would outlive its signer "
                            f"(signer expires {self.signer.not_valid_after_utc.isoformat()})")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.signer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=True, content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            # Empty subject: the SAN is the whole identity and must be critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
        )
        return builder.sign(self.signer_key, hashes.SHA256())

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self.signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.signer_key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def create_root(
    trust_domain: str, *, now: datetime, validity: timedelta = ROOT_VALIDITY,
) -> CertificateAuthority:
    """A new self-signed mesh root for ``trust_domain`` (EC P-256, CA:true, 10 years)."""
    validate_trust_domain(trust_domain)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(trust_domain=trust_domain, signer=cert, signer_key=key,
                                intermediates=(), root=cert)
