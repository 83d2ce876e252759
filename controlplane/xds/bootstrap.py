"""The minimal bootstrap of an Envoy served by ``mixer pilot``: who it is and where xDS is.

Only the node identity (Istio's node id and metadata, ``INTERCEPTION_MODE: NONE``), the
``xds-grpc`` cluster (HTTP/2; TLS with the workload's bootstrap certificate from
``mixer ca issue``, read over file SDS so ``mixer ca rotate`` can replace it, when a
certificate directory is given), ``ads_config`` with LDS and CDS over
ADS, and the admin address. Everything else comes over xDS.
"""

from __future__ import annotations

from pathlib import Path

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.core.v3.config_source_pb2 import ApiConfigSource, ApiVersion
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import SubjectAltNameMatcher
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from google.protobuf.json_format import ParseDict

from controlplane.ca.sds import ROOTCA_SECRET, WORKLOAD_SECRET, sds_file_config
from controlplane.envoy.bootstrap import node as build_node
from controlplane.envoy.clusters import cluster
from controlplane.envoy.core import envoy_grpc, pack, socket_address
from controlplane.envoy.model import Endpoint, Workload
from controlplane.pilot.tls import TLS_SOCKET, ads_source

__all__ = ["XDS_CLUSTER", "xds_bootstrap"]

#: Istio's name for the xDS cluster.
XDS_CLUSTER = "xds-grpc"


def _xds_tls(cert_dir: Path, server_san: str | None) -> UpstreamTlsContext:
    """The xds-grpc cluster's TLS: the workload's bootstrap certificate and the mesh root via
    file SDS (``default.json``/``ROOTCA.json`` of ``mixer ca issue``), so ``mixer ca rotate``
    swaps them in without a restart (Envoy watches the directory)."""
    context = UpstreamTlsContext()
    common = context.common_tls_context
    # gRPC servers negotiate HTTP/2 by ALPN.
    common.alpn_protocols.append("h2")
    ParseDict(sds_file_config(str(cert_dir), WORKLOAD_SECRET),
              common.tls_certificate_sds_secret_configs.add())
    combined = common.combined_validation_context
    ParseDict(sds_file_config(str(cert_dir), ROOTCA_SECRET),
              combined.validation_context_sds_secret_config)
    if server_san:
        combined.default_validation_context.match_typed_subject_alt_names.add(
            san_type=SubjectAltNameMatcher.URI, matcher={"exact": server_san})
    return context


def xds_bootstrap(workload: Workload, proxy_type: str, *, xds: Endpoint, admin: Endpoint,
                  cert_dir: Path | None = None, server_san: str | None = None,
                  delta: bool = False) -> Bootstrap:
    """The bootstrap; ``cert_dir`` is a ``mixer ca issue --out`` directory.

    ``server_san``: the control plane's SPIFFE id to require (None: any certificate that
    chains to the mesh root). ``delta``: incremental xDS (``DELTA_GRPC``) instead of SotW.
    """
    out = Bootstrap(node=build_node(workload, proxy_type))
    out.node.metadata.update({"INTERCEPTION_MODE": "NONE"})
    ads = out.dynamic_resources.ads_config
    ads.api_type = ApiConfigSource.DELTA_GRPC if delta else ApiConfigSource.GRPC
    ads.transport_api_version = ApiVersion.V3
    ads.set_node_on_first_message_only = True
    ads.grpc_services.append(envoy_grpc(XDS_CLUSTER))
    out.dynamic_resources.lds_config.CopyFrom(ads_source())
    out.dynamic_resources.cds_config.CopyFrom(ads_source())
    xds_cluster = cluster(XDS_CLUSTER, [xds], http2=True)
    if cert_dir is not None:
        xds_cluster.transport_socket.name = TLS_SOCKET
        xds_cluster.transport_socket.typed_config.CopyFrom(pack(_xds_tls(cert_dir, server_san)))
    out.static_resources.clusters.append(xds_cluster)
    out.admin.address.CopyFrom(socket_address(admin.host, admin.port))
    return out
