"""Host names as Istio reads them: short names, wildcards and ``namespace/host`` scopes.

Istio qualifies a short name (one without a dot) with the namespace of the resource that
wrote it and the cluster domain: ``reviews`` in namespace ``default`` is
``reviews.default.svc.cluster.local``. A name with a dot (``reviews.default``), an IP address
and ``*`` are taken as written. ServiceEntry hosts are never rewritten: they are the names
everyone else resolves to.
"""

from __future__ import annotations

import ipaddress

DEFAULT_DOMAIN = "cluster.local"


def resolve_short_name(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """``host`` fully qualified the way Istio does for VirtualService and DestinationRule hosts."""
    if not host or host == "*" or "." in host or _is_ip(host):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_matches(pattern: str, host: str) -> bool:
    """True if ``host`` is ``pattern`` or falls under a wildcard ``pattern`` (``*``,
    ``*.example.com``); a wildcard ``host`` matches a pattern that covers it."""
    if pattern == host or pattern == "*":
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        if host.startswith("*"):
            return host[1:].endswith(suffix)
        return host.endswith(suffix)
    return False


def hosts_overlap(a: str, b: str) -> bool:
    """True if some name matches both ``a`` and ``b`` (either may be a wildcard)."""
    return host_matches(a, b) or host_matches(b, a)


def split_scoped(value: str) -> tuple[str, str] | None:
    """``namespace/host`` split in two; None when there is no slash."""
    namespace, slash, host = value.partition("/")
    if not slash:
        return None
    return namespace, host


def resolve_gateway(name: str, namespace: str) -> str:
    """A VirtualService ``gateways`` entry as ``namespace/name`` (``mesh`` kept as is).

    Istio reads ``ns/name``, a bare ``name`` (the VirtualService's namespace) and the old
    ``name.ns.svc.cluster.local`` form.
    """
    if name == "mesh" or "/" in name:
        return name
    if "." in name:
        parts = name.split(".")
        return f"{parts[1]}/{parts[0]}"
    return f"{namespace}/{name}"
