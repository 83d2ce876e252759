"""The JWT output headers of a workload: always taken off the client's request, kept in bounds.

A RequestAuthentication's ``outputClaimToHeaders`` and ``outputPayloadToHeader`` name headers
the app trusts because only a verified token can produce them. So, as Istio does, every such
header of every RequestAuthentication that applies to the workload is removed from the incoming
request before the app sees it: with no token, with a token lacking the claim, and with a valid
token (the value set from the claim then overwrites the client's lines, never appends to them).

Envoy checks the request after applying an authorization answer: when its headers exceed
the HTTP connection manager's ``max_request_headers_kb`` (default 60 KiB) or
``max_headers_count`` (default 100), the whole request fails with a bare 500
(``ext_authz_invalid``). Measured on Envoy 1.40, the bytes of a header the answer removes (the
token itself) still count in that check. So output headers are fitted into what the incoming
request leaves of those limits, in order; one that does not fit is left out (and still removed
from the client's request), the rest go on, and the request is allowed with the claims that
fit. ``fit`` reports what was left out, for the servicer to log and count.

Pure: reads the compiled ``JwtRule`` objects of a ``WorkloadView`` (``view.jwt_rules``) and
plain tuples; no gRPC, no Envoy types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from extauthz.jwt import JwtRule

__all__ = ["DEFAULT_MAX_HEADERS_COUNT", "DEFAULT_MAX_REQUEST_HEADERS_KB", "OutputHeaderNames",
           "fit", "header_bytes", "output_header_names", "strip_list"]

#: Envoy's defaults (HttpConnectionManager ``max_request_headers_kb``,
#: ``common_http_protocol_options.max_headers_count``): set ours to match a changed Envoy.
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
DEFAULT_MAX_HEADERS_COUNT = 100


def output_header_names(rules: Sequence[JwtRule]) -> tuple[str, ...]:
    """Every output header the rules name (lower-case, first occurrence order, no repeats)."""
    names: dict[str, None] = {}
    for rule in rules:
        if rule.output_payload_to_header:
            names[rule.output_payload_to_header.lower()] = None
        for header, _claim in rule.output_claim_to_headers:
            names[header.lower()] = None
    return tuple(names)


class OutputHeaderNames:
    """``output_header_names`` per rule tuple, computed once (views are memoized per workload).

    Keyed by the identity of the view's ``jwt_rules`` tuple, which is kept in the entry so the
    id cannot be reused while cached; a reload brings new tuples, and the bound clears the rest.
    """

    MAX = 4096

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Sequence[JwtRule], tuple[str, ...]]] = {}

    def get(self, rules: Sequence[JwtRule]) -> tuple[str, ...]:
        """The output header names of ``rules`` (the same tuple object on every call)."""
        if not rules:
            return ()
        entry = self._entries.get(id(rules))
        if entry is not None and entry[0] is rules:
            return entry[1]
        names = output_header_names(rules)
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        self._entries[id(rules)] = (rules, names)
        return names


def strip_list(names: Sequence[str], headers_to_add: Sequence[tuple[str, str]],
               headers_to_remove: Sequence[str]) -> tuple[str, ...]:
    """Headers to remove: the token's own (``headers_to_remove``) and every output header not set.

    A header that is set is left off, so it is never removed whatever order Envoy applies the
    two lists in: the set value (``OVERWRITE_IF_EXISTS_OR_ADD``) already replaces every line the
    client sent.
    """
    set_names = {name for name, _value in headers_to_add}
    out = dict.fromkeys(headers_to_remove)
    for name in names:
        if name not in set_names:
            out[name] = None
    return tuple(out)


def header_bytes(headers: Mapping[str, str]) -> int:
    """Bytes of a header map as Envoy counts them (name + value per header, no separators)."""
    return sum(len(name) + len(value.encode("utf-8", "surrogatepass"))
               for name, value in headers.items())


def fit(
    headers_to_add: Sequence[tuple[str, str]], *, used_bytes: int, used_count: int,
    max_bytes: int = DEFAULT_MAX_REQUEST_HEADERS_KB * 1024,
    max_count: int = DEFAULT_MAX_HEADERS_COUNT,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    """(headers that fit, (name, size) of each left out), adding in order while both limits hold.

    ``used_bytes``/``used_count`` describe the incoming request; a header that does not fit is
    skipped and the following, smaller ones may still fit.
    """
    kept: list[tuple[str, str]] = []
    dropped: list[tuple[str, int]] = []
    for name, value in headers_to_add:
        size = len(name) + len(value.encode("utf-8", "surrogatepass"))
        if used_bytes + size > max_bytes or used_count + 1 > max_count:
            dropped.append((name, size))
        else:
            kept.append((name, value))
            used_bytes += size
            used_count += 1
    return tuple(kept), tuple(dropped)
