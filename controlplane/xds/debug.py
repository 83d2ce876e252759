"""The control plane's debug views (``mixer proxy-status``/``proxy-config``), as JSON.

Served over the admin HTTP port: ``/debug/proxy-status`` and
``/debug/proxy-config?proxy=KEY&kind=listeners|routes|clusters|endpoints|secrets``.
Secrets show serial, SAN and expiry, never key material: they are rendered from the
certificate, not from the resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from cryptography import x509
from google.protobuf.json_format import MessageToDict

from controlplane.ca.authority import IssuedCertificate
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.status import StatusBoard
from controlplane.xds.types import KINDS, SECRET, SHORT
from controlplane.xds.unpack import unpack

__all__ = ["certificate_view", "debug_routes", "proxy_config", "proxy_status"]


def certificate_view(name: str, cert: x509.Certificate) -> dict[str, Any]:
    """What ``proxy-config secrets`` shows of one certificate."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    return {"name": name, "serial": f"{cert.serial_number:x}", "san": uris,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}


def proxy_status(cache: SnapshotCache, status: StatusBoard) -> list[dict[str, Any]]:
    """Every proxy seen, with its per-type state and the version it should have."""
    out = []
    for proxy in status.all():
        view = proxy.as_dict()
        snapshot = cache.get(proxy.key)
        view["snapshot_version"] = snapshot.version if snapshot else ""
        for type_url, short in SHORT.items():
            view["types"][short]["latest_version"] = snapshot.versions.get(type_url, "") \
                if snapshot else ""
        out.append(view)
    return out


def proxy_config(cache: SnapshotCache, key: str, kind: str,
                 certificates: Mapping[str, IssuedCertificate]) -> list[dict[str, Any]] | None:
    """The resources of one kind pushed to proxy ``key`` (None: no such proxy or kind)."""
    snapshot = cache.get(key)
    type_url = KINDS.get(kind)
    if snapshot is None or type_url is None:
        return None
    if type_url == SECRET:
        issued = certificates.get(key)
        if issued is None or not snapshot.of(SECRET):
            return []
        return [certificate_view("default", issued.certificate),
                certificate_view("ROOTCA", issued.root)]
    out = []
    for name, packed in sorted(snapshot.of(type_url).items()):
        out.append({"name": name, "config": MessageToDict(
            unpack(packed), preserving_proto_field_name=True)})
    return out


def debug_routes(cache: SnapshotCache, status: StatusBoard,
                 certificates: Any) -> list[web.RouteDef]:
    """The aiohttp routes; ``certificates()`` returns the current certificates by proxy."""

    async def status_view(_: web.Request) -> web.Response:
        return web.json_response(proxy_status(cache, status))

    async def config_view(request: web.Request) -> web.Response:
        key = request.query.get("proxy", "")
        kind = request.query.get("kind", "")
        found = proxy_config(cache, key, kind, certificates())
        if found is None:
            return web.json_response({"error": f"no proxy '{key}' or kind '{kind}'"},
                                     status=404)
        return web.json_response(found)

    return [web.get("/debug/proxy-status", status_view),
            web.get("/debug/proxy-config", config_view)]
