"""TLS contexts: ISTIO_MUTUAL and SIMPLE upstream, STRICT/PERMISSIVE downstream (mesh CA, SDS).

Every mesh certificate comes over SDS on the ADS stream (``default`` and ``ROOTCA``), so a
rotation is a secret push, never a listener or cluster change. SANs are matched as URIs, the
SPIFFE identities Istio writes (``spiffe://TD/ns/NS/sa/SA``).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.core.v3.config_source_pb2 import ApiVersion, ConfigSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import SubjectAltNameMatcher
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)

from controlplane.ca.sds import ROOTCA_SECRET, WORKLOAD_SECRET
from controlplane.envoy.core import pack
from controlplane.mesh.model import ClientTLS, ServerTLS

__all__ = ["ISTIO_ALPNS", "downstream_mtls", "gateway_tls", "sds", "upstream_tls"]

TLS_SOCKET = "envoy.transport_sockets.tls"
#: What an ISTIO_MUTUAL client offers, and what the mTLS inbound chain matches.
ISTIO_ALPNS = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")


def ads_source() -> ConfigSource:
    """``{ads: {}, resource_api_version: V3}``: the resource comes on the ADS stream."""
    out = ConfigSource(resource_api_version=ApiVersion.V3)
    out.ads.SetInParent()
    return out


def sds(name: str) -> SdsSecretConfig:
    """A reference to the secret ``name`` over ADS."""
    return SdsSecretConfig(name=name, sds_config=ads_source())


def _uri_sans(sans: Sequence[str]) -> list[SubjectAltNameMatcher]:
    return [SubjectAltNameMatcher(san_type=SubjectAltNameMatcher.URI, matcher={"exact": s})
            for s in sans]


def _mesh_context(sans: Sequence[str], alpns: Sequence[str]) -> CommonTlsContext:
    common = CommonTlsContext(alpn_protocols=list(alpns))
    common.tls_certificate_sds_secret_configs.append(sds(WORKLOAD_SECRET))
    combined = common.combined_validation_context
    combined.default_validation_context.match_typed_subject_alt_names.extend(_uri_sans(sans))
    combined.validation_context_sds_secret_config.CopyFrom(sds(ROOTCA_SECRET))
    return common


def upstream_tls(tls: ClientTLS, *, sni: str, sans: Sequence[str]) -> TransportSocket | None:
    """The cluster's transport socket for a DestinationRule ``tls`` (None for DISABLE).

    ISTIO_MUTUAL: our certificate ``default``, the peer checked against ``ROOTCA`` and the
    expected identities ``sans``, ALPN ``istio``, SNI ``outbound_.PORT_.SUBSET_.HOST`` unless
    the rule sets one. SIMPLE: the rule's CA file (unless ``insecureSkipVerify``) and SANs.
    """
    if tls.mode == "DISABLE":
        return None
    if tls.mode == "ISTIO_MUTUAL":
        context = UpstreamTlsContext(
            sni=tls.sni or sni,
            common_tls_context=_mesh_context(tls.subject_alt_names or sans, ("istio",)))
    else:
        context = UpstreamTlsContext(sni=tls.sni or sni)
        if not tls.insecure_skip_verify:
            validation = context.common_tls_context.validation_context
            if tls.ca_certificates:
                validation.trusted_ca.filename = tls.ca_certificates
            validation.match_typed_subject_alt_names.extend(_uri_sans(tls.subject_alt_names))
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def downstream_mtls() -> TransportSocket:
    """An inbound chain's mTLS: a client certificate from the mesh required (STRICT)."""
    context = DownstreamTlsContext(
        common_tls_context=_mesh_context((), ("h2", "http/1.1")))
    context.require_client_certificate.value = True
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def gateway_tls(tls: ServerTLS) -> TransportSocket:
    """A Gateway server's TLS termination.

    SIMPLE: the server certificate and key files; MUTUAL: also a client certificate checked
    against ``caCertificates`` (and ``subjectAltNames``); ISTIO_MUTUAL: the gateway's own mesh
    certificate over SDS and a client certificate from the mesh.
    """
    if tls.mode == "ISTIO_MUTUAL":
        context = DownstreamTlsContext(common_tls_context=_mesh_context(
            tls.subject_alt_names, ("h2", "http/1.1")))
        context.require_client_certificate.value = True
        return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
    context = DownstreamTlsContext()
    common = context.common_tls_context
    common.alpn_protocols.extend(("h2", "http/1.1"))
    certificate = common.tls_certificates.add()
    certificate.certificate_chain.filename = tls.server_certificate
    certificate.private_key.filename = tls.private_key
    if tls.mode == "MUTUAL":
        common.validation_context.trusted_ca.filename = tls.ca_certificates
        common.validation_context.match_typed_subject_alt_names.extend(
            _uri_sans(tls.subject_alt_names))
        context.require_client_certificate.value = True
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
