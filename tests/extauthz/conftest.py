"""Fixtures for the policy service tests: policy compilation, requests, JWT signing keys."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from extauthz.engine import Decision, decide
from extauthz.jwt import AuthnOutcome
from extauthz.policy import PolicySet, load_text
from extauthz.request import AuthzRequest

TESTDATA = Path(__file__).parent / "testdata"


def policies(text: str, **kwargs: Any) -> PolicySet:
    """Compile policy YAML text."""
    return load_text(text, **kwargs)


def request(path: str = "/", **kwargs: Any) -> AuthzRequest:
    """A request with defaults (GET, no workload identity)."""
    return AuthzRequest.build(path=path, **kwargs)


def evaluate(ps: PolicySet, req: AuthzRequest, authn: AuthnOutcome | None = None,
             **kwargs: Any) -> Decision:
    """Run the engine for ``req``."""
    view = ps.view(req.context_extensions)
    return decide(ps, view, req, authn or AuthnOutcome(), **kwargs)


class Helpers:
    """Test helpers handed out by the ``h`` fixture (importlib mode forbids importing conftest)."""

    policies = staticmethod(policies)
    request = staticmethod(request)
    evaluate = staticmethod(evaluate)
    testdata = TESTDATA

    @staticmethod
    def verdict(ps: PolicySet, path: str = "/", **kwargs: Any) -> str:
        """Just the verdict for a request built from ``path`` and ``kwargs``."""
        return evaluate(ps, request(path, **kwargs)).verdict

    @staticmethod
    def certificate(uris: list[str] | None = None, dns: list[str] | None = None,
                    common_name: str = "peer") -> str:
        """A self-signed PEM certificate with these SANs (EC key: fast to generate)."""
        return certificate_and_key(uris, dns, common_name)[0]

    @staticmethod
    def certificate_and_key(uris: list[str] | None = None, dns: list[str] | None = None,
                            common_name: str = "peer", issuer: Any = None,
                            ca: bool = False) -> tuple[str, str]:
        """(certificate PEM, key PEM): see ``certificate_and_key``."""
        return certificate_and_key(uris, dns, common_name, issuer, ca)


def certificate_and_key(uris: list[str] | None = None, dns: list[str] | None = None,
                        common_name: str = "peer", issuer: Any = None,
                        ca: bool = False) -> tuple[str, str]:
    """(certificate PEM, key PEM), self-signed or signed by ``issuer`` = (cert PEM, key PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris or []]
    sans += [x509.DNSName(d) for d in dns or []]
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    signer_key: Any = key
    issuer_name = name
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(issuer[0].encode())
        signer_key = serialization.load_pem_private_key(issuer[1].encode(), password=None)
        issuer_name = issuer_cert.subject
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    cert = builder.sign(signer_key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


@pytest.fixture
def h() -> type[Helpers]:
    """Policy/request/evaluate helpers."""
    return Helpers


class Signer:
    """An RSA key pair generated for the test, signing tokens for one issuer."""

    def __init__(self, issuer: str = "https://issuer.example", kid: str = "k1") -> None:
        self.issuer = issuer
        self.key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256"})
        self.jwks_dict = {"keys": [self.key.as_dict(private=False)]}
        self.jwks = json.dumps(self.jwks_dict)
        self.keyset = KeySet.import_key_set(self.jwks_dict)  # type: ignore[arg-type]

    def token(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A signed token; default claims iss/sub/exp (1 h); pass ``exp=None`` to omit one."""
        body: dict[str, Any] = {"iss": self.issuer, "sub": "alice", "exp": int(time.time()) + 3600}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(header or {"alg": "RS256", "kid": "k1"}, body, self.key)


_SIGNERS: dict[str, Signer] = {}


@pytest.fixture(scope="session")
def signer() -> Signer:
    """One RSA signer per session (key generation is the slow part)."""
    if "main" not in _SIGNERS:
        _SIGNERS["main"] = Signer()
    return _SIGNERS["main"]


@pytest.fixture(scope="session")
def other_signer() -> Signer:
    """A second key pair with the same issuer and kid (tokens it signs must fail)."""
    if "other" not in _SIGNERS:
        _SIGNERS["other"] = Signer()
    return _SIGNERS["other"]
