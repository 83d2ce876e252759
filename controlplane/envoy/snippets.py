"""``mixer envoy-config --snippets``: the pieces to paste into an Envoy someone else configures."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from controlplane.envoy.bootstrap import node
from controlplane.envoy.clusters import service_clusters
from controlplane.envoy.core import pack
from controlplane.envoy.filters import (
    EXT_AUTHZ,
    access_log,
    authz_disabled,
    authz_per_route,
    authz_with_istio_inputs,
    peer_request_strip_filter,
    ratelimit_filter,
)
from controlplane.envoy.model import MeshTls, MixerServices, Upstream, Workload
from controlplane.envoy.ratelimit_actions import Actions, rate_limits_block
from controlplane.envoy.render import message_to_data, yaml_text
from controlplane.envoy.tls import downstream_tls, upstream_tls


def _per_filter(settings: Message) -> dict[str, object]:
    return {EXT_AUTHZ: message_to_data(pack(settings))}


def _each(messages: Sequence[Message]) -> list[object]:
    return [message_to_data(m) for m in messages]


def snippets(services: MixerServices, workload: Workload, domain: str,
             actions: Sequence[Actions], proxy_type: str = "sidecar", *,
             tls: MeshTls | None = None, upstreams: Sequence[Upstream] = ()) -> str:
    """The pieces to paste into an existing Envoy, with comments saying where each goes.

    With ``tls`` (``--cert-dir``) also the mesh mTLS sockets: the inbound server side and,
    per upstream, the ISTIO_MUTUAL client side.
    """
    sections: list[tuple[str, object]] = [
        ("bootstrap node: who this Envoy is (telemetry labels come from here)",
         {"node": message_to_data(node(workload, proxy_type))}),
        ("static_resources.clusters: add these (HTTP/2 is required for gRPC)",
         _each(service_clusters(services))),
        ("HttpConnectionManager.http_filters: put these BEFORE envoy.filters.http.router",
         _each([*authz_with_istio_inputs(services), ratelimit_filter(services, domain)])),
        ("HttpConnectionManager.access_log: add this entry",
         _each([access_log(services, f"{proxy_type}-{workload.name}")])),
        ("virtual_host (or route) typed_per_filter_config: the workload identity for policies",
         _per_filter(authz_per_route(workload))),
        ("health-check routes: typed_per_filter_config to skip the policy check",
         _per_filter(authz_disabled())),
        ("HttpConnectionManager.http_filters on gateways and plaintext listeners: FIRST, so "
         "no client can send peer metadata", _each([peer_request_strip_filter()])),
    ]
    if tls is not None:
        sections.append(("inbound filter_chains[].transport_socket: mesh mTLS, client "
                         "certificate required (STRICT)", message_to_data(downstream_tls(tls))))
        for up in upstreams:
            sections.append((f"clusters[{up.cluster_name}].transport_socket: ISTIO_MUTUAL",
                             message_to_data(upstream_tls(tls, up))))
    if actions:
        sections.append((f"virtual_host.rate_limits: derived from domain '{domain}'",
                         _each(rate_limits_block(actions))))
    else:
        sections.append((
            "virtual_host.rate_limits: pass --ratelimit-config PATH to derive these",
            []))
    return "\n".join(f"# --- {title}\n" + yaml_text(data) for title, data in sections)
