"""Mesh mTLS: the TLS transport sockets of Istio's ISTIO_MUTUAL, certificates from file SDS.

- the server side (:func:`downstream_tls`) presents the workload certificate and requires a
  client certificate chaining to the mesh root (``ROOTCA``): STRICT, or the mTLS chain of
  PERMISSIVE;
- the client side (:func:`upstream_tls`) presents the workload certificate, offers ALPN
  ``istio`` (so a PERMISSIVE server picks its mTLS chain), sends Istio's SNI and accepts the
  destination only if its URI SAN is the SPIFFE id of the service account it runs as.

Both read the secrets ``default`` (chain and key) and ``ROOTCA`` (the root) from the files
``mixer ca issue`` writes into a certificate directory, through ``path_config_source`` with
``watched_directory``: the atomic ``..data`` swap of a rotation is picked up without a restart.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import SubjectAltNameMatcher
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)

from controlplane.envoy.core import pack
from controlplane.envoy.model import MeshTls, Upstream

TLS_SOCKET = "envoy.transport_sockets.tls"
#: Istio's secret names (the files ``default.json`` / ``ROOTCA.json`` in the cert directory).
WORKLOAD_SECRET = "default"
ROOTCA_SECRET = "ROOTCA"
#: ALPN a mesh client offers; a PERMISSIVE server's mTLS chain matches these (Istio's list).
CLIENT_ALPN = ("istio",)
MESH_ALPNS = ("istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2")
#: ALPN the server itself negotiates: never ``istio``, so HTTP/2 still works (as in Istio).
SERVER_ALPN = ("h2", "http/1.1")


def sds_secret(cert_dir: str, name: str) -> SdsSecretConfig:
    """The secret ``name`` from ``<cert_dir>/<name>.json``, re-read when ``cert_dir`` changes."""
    directory = cert_dir.rstrip("/")
    out = SdsSecretConfig(name=name)
    out.sds_config.resource_api_version = ApiVersion.V3
    source = out.sds_config.path_config_source
    source.path = f"{directory}/{name}.json"
    source.watched_directory.path = directory
    return out


def _common(tls: MeshTls, alpn: tuple[str, ...]) -> CommonTlsContext:
    out = CommonTlsContext(alpn_protocols=alpn)
    out.tls_certificate_sds_secret_configs.append(sds_secret(tls.cert_dir, WORKLOAD_SECRET))
    return out


def downstream_tls(tls: MeshTls) -> TransportSocket:
    """Server-side mTLS: our certificate, and a client certificate from the mesh required."""
    context = DownstreamTlsContext(common_tls_context=_common(tls, SERVER_ALPN))
    context.require_client_certificate.value = True
    context.common_tls_context.validation_context_sds_secret_config.CopyFrom(
        sds_secret(tls.cert_dir, ROOTCA_SECRET))
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def upstream_tls(tls: MeshTls, upstream: Upstream) -> TransportSocket:
    """Client-side mTLS (ISTIO_MUTUAL): our certificate, the destination's SPIFFE SAN checked."""
    context = UpstreamTlsContext(common_tls_context=_common(tls, CLIENT_ALPN), sni=upstream.sni)
    combined = context.common_tls_context.combined_validation_context
    combined.default_validation_context.match_typed_subject_alt_names.add(
        san_type=SubjectAltNameMatcher.URI).matcher.exact = upstream.principal(tls.trust_domain)
    combined.validation_context_sds_secret_config.CopyFrom(
        sds_secret(tls.cert_dir, ROOTCA_SECRET))
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))
