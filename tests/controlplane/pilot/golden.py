"""A stable, readable view of generated resources for the golden files.

Pinned in full: route tables, outbound/inbound clusters, endpoints. Listeners are summarized
(address, chains, TLS, RDS name, HTTP filter order; a TCP chain's proxy cluster and logs):
their filter configs are the shared builders' (pinned by tests/controlplane/envoy).
Peer-metadata header values (base64 of the node metadata) are shown as ``<peer>``; our own
service clusters are left out.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from controlplane.envoy.model import AUTHZ_CLUSTER, RATELIMIT_CLUSTER, TELEMETRY_CLUSTER
from controlplane.pilot import ProxyResources

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
       "HttpConnectionManager"
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_OURS = {AUTHZ_CLUSTER, RATELIMIT_CLUSTER, TELEMETRY_CLUSTER}
#: The filters this package wires or relies on; the shared chain's helpers may come and go.
_PINNED_FILTERS = {"envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit",
                   "envoy.filters.http.fault", "envoy.filters.http.router"}


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        header = value.get("header")
        if isinstance(header, dict) and str(header.get("key", "")).startswith("x-mixer-peer"):
            return {**value, "header": {**header, "value": "<peer>"}}
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _tls(context: dict[str, Any] | None) -> dict[str, Any] | None:
    if context is None:
        return None
    common = context.get("common_tls_context", {})
    return {
        "require_client_certificate": context.get("require_client_certificate", False),
        "certificates": [c["certificate_chain"]["filename"]
                         for c in common.get("tls_certificates", [])]
        + [s["name"] for s in common.get("tls_certificate_sds_secret_configs", [])],
        "alpn": common.get("alpn_protocols", []),
        "validation": common.get("validation_context")
        or common.get("combined_validation_context"),
    }


def _listener(listener: Any) -> dict[str, Any]:
    data = _dict(listener)
    chains = []
    for chain in data.get("filter_chains", []):
        hcm = chain["filters"][0]["typed_config"]
        if hcm["@type"] == _TCP_PROXY:
            chains.append({
                "name": chain.get("name", ""),
                "match": chain.get("filter_chain_match", {}),
                "tls": _tls(chain.get("transport_socket", {}).get("typed_config")),
                "tcp_proxy": hcm["cluster"],
                "access_log": [a["typed_config"]["common_config"]["log_name"]
                               for a in hcm.get("access_log", [])],
            })
            continue
        assert hcm["@type"] == _HCM
        chains.append({
            "name": chain.get("name", ""),
            "match": chain.get("filter_chain_match", {}),
            "tls": _tls(chain.get("transport_socket", {}).get("typed_config")),
            "rds": hcm.get("rds", {}).get("route_config_name"),
            "inline_routes": hcm.get("route_config", {}).get("name"),
            "http_filters": [f["name"] for f in hcm.get("http_filters", [])
                             if f["name"] in _PINNED_FILTERS],
            "access_log": [a["typed_config"]["common_config"]["log_name"]
                           for a in hcm.get("access_log", [])],
            "edge": hcm.get("use_remote_address", False),
        })
    return {"name": data["name"], "address": data["address"], "chains": chains,
            "listener_filters": [f["name"] for f in data.get("listener_filters", [])]}


def view(resources: ProxyResources) -> dict[str, Any]:
    """The golden view of one proxy."""
    return _scrub({
        "listeners": [_listener(x) for x in resources.listeners],
        "inline_routes": [r for x in resources.listeners for c in _dict(x)["filter_chains"][:1]
                          if (r := c["filters"][0]["typed_config"].get("route_config"))
                          and c["filters"][0]["typed_config"]["@type"] == _HCM],
        "routes": [_dict(r) for r in resources.routes],
        "clusters": [_dict(c) for c in resources.clusters if c.name not in _OURS],
        "service_clusters": sorted(c.name for c in resources.clusters if c.name in _OURS),
        "endpoints": [_dict(e) for e in resources.endpoints],
        "secrets": [s.name for s in resources.secrets],
    })
