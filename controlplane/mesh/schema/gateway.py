"""``Gateway`` spec (istio/api networking/v1alpha3 gateway.proto): ingress and egress."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from controlplane.mesh.schema.common import (
    PortNumber,
    Protocol,
    Strict,
    Unsupported,
    reject_values,
    unsupported,
)


class GatewayPort(Strict):
    """``Port``: every field is required on a Gateway server."""

    number: PortNumber
    protocol: Protocol
    name: str
    target_port: Unsupported = unsupported("targetPort")  # deprecated in Istio


class ServerTLS(Strict):
    """``ServerTLSSettings``: certificates from files (there is no Kubernetes secret store)."""

    https_redirect: bool = Field(False, alias="httpsRedirect")
    mode: Annotated[
        Literal["SIMPLE", "MUTUAL", "ISTIO_MUTUAL"],
        reject_values({
            "PASSTHROUGH": "needs VirtualService tls routes, which are not supported",
            "AUTO_PASSTHROUGH": "needs VirtualService tls routes, which are not supported",
            "OPTIONAL_MUTUAL": "use MUTUAL or SIMPLE",
        }),
    ] = "SIMPLE"
    server_certificate: str = Field("", alias="serverCertificate")
    private_key: str = Field("", alias="privateKey")
    ca_certificates: str = Field("", alias="caCertificates")
    subject_alt_names: list[str] = Field([], alias="subjectAltNames")
    credential_name: Unsupported = unsupported("credentialName")
    credential_names: Unsupported = unsupported("credentialNames")
    ca_cert_credential_name: Unsupported = unsupported("caCertCredentialName")
    tls_certificates: Unsupported = unsupported("tlsCertificates")
    ca_crl: Unsupported = unsupported("caCrl")
    verify_certificate_spki: Unsupported = unsupported("verifyCertificateSpki")
    verify_certificate_hash: Unsupported = unsupported("verifyCertificateHash")
    min_protocol_version: Unsupported = unsupported("minProtocolVersion")
    max_protocol_version: Unsupported = unsupported("maxProtocolVersion")
    cipher_suites: Unsupported = unsupported("cipherSuites")
    insecure_skip_verify: Unsupported = unsupported("insecureSkipVerify")


class Server(Strict):
    """``Gateway.servers[]``."""

    port: GatewayPort
    bind: str = ""
    hosts: list[str] = Field(min_length=1)
    tls: ServerTLS | None = None
    name: str = ""
    default_endpoint: Unsupported = unsupported("defaultEndpoint")


class GatewaySpec(Strict):
    """``Gateway.spec``."""

    servers: list[Server] = Field(min_length=1)
    selector: dict[str, str] = {}
