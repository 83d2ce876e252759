"""Who is on the other end of an xDS stream, and whether it may be who its node claims.

A proxy names itself with Istio's node id, ``TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local``
(``sidecar`` or ``router``), which anyone can write into a bootstrap. What it cannot fake is its
TLS client certificate: the xDS port requires one that chains to the mesh root, and its SPIFFE
URI (``spiffe://TD/ns/NS/sa/SA``, issued by ``mixer ca issue``) names a namespace and a service
account. A stream is served only when that identity is the one the mesh gives the workload the
node claims (same trust domain, namespace and service account), as istiod does. Anything else
is refused, logged and counted: such a process gets nothing, and in particular no private key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography import x509

from controlplane.ca.authority import CertificateAuthority, IssuedCertificate
from controlplane.ca.errors import InvalidIdentity
from controlplane.ca.identity import SpiffeId
from controlplane.ca.rotate import rotation_time

__all__ = [
    "PILOT_IDENTITY",
    "IdentityError",
    "NodeId",
    "ServingCertificate",
    "authorize",
    "peer_spiffe_ids",
    "server_credentials",
]

#: The service account the control plane's own serving certificate names (Istio's istiod).
PILOT_IDENTITY = ("istio-system", "istiod")


class IdentityError(Exception):
    """A stream may not be served: ``reason`` is a stable label, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeId:
    """Istio's node id, parsed."""

    proxy_type: str
    ip: str
    name: str
    namespace: str

    @property
    def key(self) -> str:
        """``name.namespace``: the workload the proxy claims to stand for."""
        return f"{self.name}.{self.namespace}"

    @classmethod
    def parse(cls, node_id: str) -> NodeId:
        """Parse ``TYPE~IP~NAME.NS~NS.svc.cluster.local``; IdentityError if malformed."""
        parts = node_id.split("~")
        if len(parts) != 4 or "." not in parts[2] or not parts[0]:
            raise IdentityError("bad_node_id", f"node id '{node_id}' is not "
                                "TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local")
        name, _, namespace = parts[2].rpartition(".")
        return cls(parts[0], parts[1], name, namespace)

    def render(self) -> str:
        """Back to the node id string."""
        ns = self.namespace
        return f"{self.proxy_type}~{self.ip}~{self.name}.{ns}~{ns}.svc.cluster.local"


def peer_spiffe_ids(auth_context: Mapping[str, Sequence[bytes]]) -> tuple[SpiffeId, ...]:
    """The Istio SPIFFE ids in the peer certificate of a gRPC ``auth_context()``.

    Empty for a plaintext peer (or a certificate without such a URI SAN).
    """
    pems = auth_context.get("x509_pem_cert") or ()
    out: list[SpiffeId] = []
    for pem in pems[:1]:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, x509.ExtensionNotFound):
            continue
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            try:
                out.append(SpiffeId.parse(uri))
            except InvalidIdentity:
                continue
    return tuple(out)


def authorize(node: NodeId, peers: Sequence[SpiffeId],
              expected: Callable[[NodeId], SpiffeId | None]) -> SpiffeId:
    """The identity a stream is served as, or IdentityError.

    ``expected`` gives the identity the mesh assigns to the claimed workload (None: the mesh
    has no such workload).
    """
    if not peers:
        raise IdentityError("no_peer_identity",
                            "the peer presented no certificate with a SPIFFE identity")
    want = expected(node)
    if want is None:
        raise IdentityError("unknown_workload", f"no workload {node.key} in the mesh")
    if want not in peers:
        got = ", ".join(p.uri for p in peers)
        raise IdentityError("identity_mismatch",
                            f"node claims {node.key} ({want.uri}) but its certificate is {got}")
    return want


class ServingCertificate:
    """The control plane's own certificate, reissued at half-life (checked per handshake)."""

    def __init__(self, ca: CertificateAuthority, *, clock: Callable[[], datetime],
                 ttl: timedelta = timedelta(days=30)) -> None:
        self._ca = ca
        self._clock = clock
        self._ttl = ttl
        self.issued = self._issue()

    def _issue(self) -> IssuedCertificate:
        namespace, account = PILOT_IDENTITY
        return self._ca.issue(SpiffeId(self._ca.trust_domain, namespace, account),
                              now=self._clock(), ttl=self._ttl)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The gRPC certificate configuration of the current certificate."""
        return grpc.ssl_server_certificate_configuration(
            [(self.issued.key_pem(), self.issued.chain_pem)],
            root_certificates=self.issued.root_pem)

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration once the certificate is due, else None (keep the current)."""
        cert = self.issued.certificate
        if self._clock() < rotation_time(cert.not_valid_before_utc, cert.not_valid_after_utc):
            return None
        self.issued = self._issue()
        return self.configuration()


def server_credentials(serving: ServingCertificate) -> grpc.ServerCredentials:
    """TLS for the xDS port: our own certificate, and a client certificate required.

    Clients must chain to the mesh root; a plaintext or unauthenticated client fails the
    handshake and never reaches the servicer. gRPC asks ``serving.refresh`` before every
    handshake, so the certificate is replaced before it expires without a restart.
    """
    return grpc.dynamic_ssl_server_credentials(
        serving.configuration(), serving.refresh, require_client_authentication=True)
