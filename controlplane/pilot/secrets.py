"""A workload's SDS secrets, Istio's names: ``default`` (its chain and key), ``ROOTCA``."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from controlplane.ca.authority import IssuedCertificate
from controlplane.ca.sds import ROOTCA_SECRET, WORKLOAD_SECRET

__all__ = ["ROOTCA_SECRET", "WORKLOAD_SECRET", "workload_secrets"]


def workload_secrets(issued: IssuedCertificate) -> list[Secret]:
    """The two secrets; ``default`` carries the private key (never shown by debug views)."""
    default = Secret(name=WORKLOAD_SECRET)
    default.tls_certificate.certificate_chain.inline_bytes = issued.chain_pem
    default.tls_certificate.private_key.inline_bytes = issued.key_pem()
    root = Secret(name=ROOTCA_SECRET)
    root.validation_context.trusted_ca.inline_bytes = issued.root_pem
    return [default, root]
