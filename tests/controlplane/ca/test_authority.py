"""The pure CA: root fields, workload fields, chains, CSRs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from controlplane.ca import CertificateAuthority, InvalidCA, SpiffeId, create_root
from controlplane.ca.authority import MAX_WORKLOAD_TTL
from controlplane.ca.errors import InvalidDuration

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ID = SpiffeId("cluster.local", "default", "httpbin")


MakeCA = Callable[..., Any]


def _ext(cert: x509.Certificate,
         kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def _verify(root: x509.Certificate, chain: tuple[x509.Certificate, ...], *,
            at: timedelta = timedelta(hours=1)) -> list[x509.Certificate]:
    verifier = PolicyBuilder().store(Store([root])).time(NOW + at).build_client_verifier()
    return list(verifier.verify(chain[0], list(chain[1:])).chain)


def test_root_is_p256_ca_for_ten_years_named_after_the_trust_domain() -> None:
    """The root: EC P-256, CA:true critical, keyCertSign+cRLSign, 10 years, O=<trust domain>."""
    ca = create_root("cluster.local", now=NOW)
    root = ca.root
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca  # type: ignore[attr-defined]
    ku = _ext(root, x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature  # type: ignore[attr-defined]
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650)
    org = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert org[0].value == "cluster.local"
    assert ca.self_signed


def test_workload_cert_has_exactly_the_spiffe_uri_and_nothing_else_identifying() -> None:
    """One URI SAN (the SPIFFE id), critical; empty subject; no DNS/IP/email names."""
    issued = create_root("cluster.local", now=NOW).issue(ID, now=NOW)
    cert = issued.certificate
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [  # type: ignore[call-overload]
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/httpbin")]
    assert len(cert.subject) == 0


def test_workload_cert_usages_constraints_and_key_ids() -> None:
    """digitalSignature+keyEncipherment, serverAuth+clientAuth, CA:false, SKI, AKI = root SKI."""
    ca = create_root("cluster.local", now=NOW)
    cert = ca.issue(ID, now=NOW).certificate
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment  # type: ignore[attr-defined]
    assert not ku.key_cert_sign  # type: ignore[attr-defined]
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == {  # type: ignore[call-overload]
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _ext(cert, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    root_ski = _ext(ca.root, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest  # type: ignore[attr-defined]
    ski = _ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def test_ttl_defaults_to_24h_and_is_exact() -> None:
    """Default lifetime is 24 h from ``now``; an explicit TTL is honoured to the second."""
    ca = create_root("cluster.local", now=NOW)
    cert = ca.issue(ID, now=NOW).certificate
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (
        NOW, NOW + timedelta(hours=24))
    short = ca.issue(ID, now=NOW, ttl=timedelta(minutes=90)).certificate
    assert short.not_valid_after_utc == NOW + timedelta(minutes=90)


def test_ttl_above_the_maximum_is_refused() -> None:
    """More than 90 days (Istio's max workload TTL) raises InvalidDuration."""
    ca = create_root("cluster.local", now=NOW)
    with pytest.raises(InvalidDuration):
        ca.issue(ID, now=NOW, ttl=MAX_WORKLOAD_TTL + timedelta(seconds=1))


def test_chain_verifies_to_the_self_signed_root() -> None:
    """The issued chain is the leaf only, and verifies to the root as a TLS client cert."""
    ca = create_root("cluster.local", now=NOW)
    issued = ca.issue(ID, now=NOW)
    assert issued.chain == (issued.certificate,)
    assert _verify(ca.root, issued.chain)[-1] == ca.root


def test_serials_are_unique_and_keys_fresh() -> None:
    """Every issue gets a new serial and a new key."""
    ca = create_root("cluster.local", now=NOW)
    a, b = ca.issue(ID, now=NOW), ca.issue(ID, now=NOW)
    assert a.certificate.serial_number != b.certificate.serial_number
    assert a.key_pem() != b.key_pem()


def test_another_trust_domain_is_refused() -> None:
    """A CA only signs identities of its own trust domain."""
    ca = create_root("cluster.local", now=NOW)
    with pytest.raises(InvalidCA, match="trust domain"):
        ca.issue(SpiffeId("other.example", "default", "a"), now=NOW)


def test_cert_cannot_outlive_its_signer() -> None:
    """Issuing past the signer's expiry is an error, not a silently truncated cert."""
    ca = create_root("cluster.local", now=NOW, validity=timedelta(hours=2))
    with pytest.raises(InvalidCA, match="outlive"):
        ca.issue(ID, now=NOW)


def test_intermediate_signer_chain_is_leaf_then_intermediate_and_verifies(
    ca_factory: MakeCA,
) -> None:
    """Plug-in CA: chain = workload + intermediate; verifies to the user's root."""
    root, root_key = ca_factory("User Root")
    inter, inter_key = ca_factory("Intermediate", issuer=(root, root_key))
    ca = CertificateAuthority.from_parts(trust_domain="cluster.local", signer=inter,
                                         signer_key=inter_key, root=root,
                                         intermediates=(inter, root))
    issued = ca.issue(ID, now=NOW)
    assert issued.chain == (issued.certificate, inter)
    assert issued.root == root
    assert _verify(root, issued.chain) == [issued.certificate, inter, root]
    assert issued.certificate.issuer == inter.subject


def test_from_parts_rejects_mismatched_key(ca_factory: MakeCA) -> None:
    """A ca-key.pem that is not ca-cert.pem's key is refused."""
    root, _ = ca_factory("Root")
    _, other_key = ca_factory("Other")
    with pytest.raises(InvalidCA, match="does not match"):
        CertificateAuthority.from_parts(trust_domain="cluster.local", signer=root,
                                        signer_key=other_key, root=root)


def test_from_parts_rejects_a_signer_not_under_the_root(ca_factory: MakeCA) -> None:
    """An intermediate from another root breaks the chain."""
    root, _ = ca_factory("Root")
    other_root, other_key = ca_factory("Other Root")
    inter, inter_key = ca_factory("Inter", issuer=(other_root, other_key))
    with pytest.raises(InvalidCA, match="broken chain"):
        CertificateAuthority.from_parts(trust_domain="cluster.local", signer=inter,
                                        signer_key=inter_key, root=root)


def test_from_parts_rejects_a_non_ca_signer(ca_factory: MakeCA) -> None:
    """A leaf certificate cannot be the signer."""
    leaf, key = ca_factory("Leaf", ca=False)
    with pytest.raises(InvalidCA, match="not a CA"):
        CertificateAuthority.from_parts(trust_domain="cluster.local", signer=leaf,
                                        signer_key=key, root=leaf)


def test_sign_csr_uses_the_csr_key_but_the_callers_identity() -> None:
    """Names in the CSR are ignored; the SAN is the identity the caller granted."""
    ca = create_root("cluster.local", now=NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    issued = ca.sign_csr(csr, ID, now=NOW)
    assert issued.certificate.public_key() == key.public_key()
    assert len(issued.certificate.subject) == 0
    san = _ext(issued.certificate, x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == [ID.uri]  # type: ignore[attr-defined]
    assert issued.private_key is None
    with pytest.raises(ValueError):
        issued.key_pem()


def test_sign_csr_refuses_weak_rsa() -> None:
    """RSA keys below 2048 bits are not certified."""
    ca = create_root("cluster.local", now=NOW)
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    with pytest.raises(InvalidCA, match="2048"):
        ca.sign_csr(csr, ID, now=NOW)


def test_repr_never_shows_key_material() -> None:
    """Neither the CA nor an issued cert puts key bytes in its repr."""
    ca = create_root("cluster.local", now=NOW)
    issued = ca.issue(ID, now=NOW)
    for text in (repr(ca), repr(issued), str(issued)):
        assert "PRIVATE" not in text and "Key" not in text.replace("KeyCert", "")
