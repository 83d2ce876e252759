"""Envoy ``rate_limits`` actions derived from the ratelimit config: one source of truth.

With envoyproxy/ratelimit, the descriptors Envoy sends (route ``rate_limits`` actions) and the
descriptors the service expects (its YAML) are written by hand in two places and drift apart
silently. Here the actions are generated from the service's config: every descriptor path that
carries a limit becomes one ``rate_limits`` entry whose actions produce exactly that path.

Descriptor keys map to Envoy actions by this documented convention:

==================  ===============  ==========================================================
key                 value            Envoy action (descriptor entry sent)
==================  ===============  ==========================================================
``generic_key``     required         ``generic_key`` (``generic_key=<value>``)
``remote_address``  any / none       ``remote_address`` (client IP)
``source_cluster``  any / none       ``source_cluster`` (this proxy's node cluster)
``destination_cluster`` any / none   ``destination_cluster`` (the route's target cluster)
``method``          any / none       ``request_headers`` of ``:method``
``path``            any / none       ``request_headers`` of ``:path`` (includes the query)
``authority``       any / none       ``request_headers`` of ``:authority``
``path_prefix``     required         ``header_value_match`` on ``:path`` prefix (sends
                                     ``path_prefix=<value>`` only for matching requests)
``header.<name>``   any / none       ``request_headers`` of header ``<name>``
==================  ===============  ==========================================================

Any other key is an error: Envoy could never send it, so the limit would never apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from envoy.config.route.v3.route_components_pb2 import HeaderMatcher, RateLimit

from envoy_mixer.common.errors import ConfigError

DescriptorPath = tuple[tuple[str, str | None], ...]
Action: TypeAlias = RateLimit.Action
#: The actions of one ``rate_limits`` entry: together they produce one descriptor.
Actions = tuple[Action, ...]

_HEADER_KEYS = {"method": ":method", "path": ":path", "authority": ":authority"}
_PLAIN_ACTIONS = {
    "remote_address": "remote_address",
    "source_cluster": "source_cluster",
    "destination_cluster": "destination_cluster",
}
KNOWN_KEYS = ("generic_key", *_PLAIN_ACTIONS, *_HEADER_KEYS, "path_prefix", "header.<name>")


def action_for(key: str, value: str | None) -> Action:
    """The Envoy action producing descriptor entry ``key`` (with ``value`` where it is fixed)."""
    if key == "generic_key":
        if value is None or value.endswith("*"):
            raise ValueError("generic_key needs a literal value (Envoy sends exactly that value)")
        return Action(generic_key=Action.GenericKey(descriptor_value=value))
    if key in _PLAIN_ACTIONS:
        action = Action()
        getattr(action, _PLAIN_ACTIONS[key]).SetInParent()
        return action
    if key in _HEADER_KEYS:
        return _request_headers(_HEADER_KEYS[key], key)
    if key == "path_prefix":
        if value is None or value.endswith("*"):
            raise ValueError("path_prefix needs a literal value (the prefix to match)")
        match = Action.HeaderValueMatch(
            descriptor_key="path_prefix", descriptor_value=value, expect_match={"value": True},
            headers=[HeaderMatcher(name=":path", string_match={"prefix": value})],
        )
        return Action(header_value_match=match)
    if key.startswith("header.") and len(key) > len("header."):
        return _request_headers(key[len("header."):], key)
    raise ValueError(
        f"descriptor key '{key}' has no Envoy action; use one of {', '.join(KNOWN_KEYS)}"
    )


def _request_headers(header: str, descriptor_key: str) -> Action:
    return Action(request_headers=Action.RequestHeaders(
        header_name=header, descriptor_key=descriptor_key))


def actions_for_paths(paths: Sequence[DescriptorPath], *, file: str | None = None) -> list[Actions]:
    """One actions list per descriptor path (duplicates dropped, order kept)."""
    out: list[Actions] = []
    for path in paths:
        try:
            actions = tuple(action_for(key, value) for key, value in path)
        except ValueError as exc:
            raise ConfigError(str(exc), file=file, field=_render(path)) from None
        if actions not in out:
            out.append(actions)
    return out


def actions_from_config(config_path: Path, domain: str) -> list[Actions]:
    """Load the ratelimit config and derive the actions for ``domain`` (none if it is absent)."""
    from ratelimit.config import load_config

    config = load_config(config_path)
    if domain not in config.domains:
        return []
    return actions_for_paths(config.descriptor_paths(domain), file=str(config_path))


def rate_limits_block(actions: Sequence[Actions]) -> list[RateLimit]:
    """The route/virtual-host ``rate_limits`` entries for a list of actions lists."""
    return [RateLimit(actions=a) for a in actions]


@dataclass(frozen=True, slots=True)
class RequestView:
    """What Envoy's rate-limit actions look at in a request (headers lower-cased)."""

    headers: Mapping[str, str] = field(default_factory=dict)
    remote_address: str = "192.0.2.10"
    source_cluster: str = "ingress"
    destination_cluster: str = "outbound|8080||frontend.default.svc.cluster.local"


def evaluate(actions: Actions, request: RequestView) -> tuple[tuple[str, str], ...] | None:
    """The descriptor Envoy would send for one ``rate_limits`` entry, or None if it is dropped.

    Mirrors Envoy: an action that cannot produce its entry (missing header, non-matching
    ``header_value_match``) drops the whole descriptor.
    """
    entries: list[tuple[str, str]] = []
    for action in actions:
        kind = action.WhichOneof("action_specifier")
        if kind == "generic_key":
            key = action.generic_key.descriptor_key or "generic_key"
            entries.append((key, action.generic_key.descriptor_value))
        elif kind == "remote_address":
            entries.append(("remote_address", request.remote_address))
        elif kind == "source_cluster":
            entries.append(("source_cluster", request.source_cluster))
        elif kind == "destination_cluster":
            entries.append(("destination_cluster", request.destination_cluster))
        elif kind == "request_headers":
            spec = action.request_headers
            value = request.headers.get(spec.header_name.lower())
            if value is None:
                return None
            entries.append((spec.descriptor_key, value))
        elif kind == "header_value_match":
            match = action.header_value_match
            matched = all(
                request.headers.get(h.name.lower(), "").startswith(h.string_match.prefix)
                for h in match.headers
            )
            expected = match.expect_match.value if match.HasField("expect_match") else True
            if matched != expected:
                return None
            entries.append((match.descriptor_key, match.descriptor_value))
        else:
            raise ValueError(f"unknown action {kind!r}")
    return tuple(entries)


def path_matches(path: DescriptorPath, descriptor: Sequence[tuple[str, str]]) -> bool:
    """True if ``descriptor`` walks exactly down ``path`` (bare keys and ``x*`` wildcards match)."""
    if len(path) != len(descriptor):
        return False
    for (key, want), (got_key, got) in zip(path, descriptor, strict=True):
        if key != got_key:
            return False
        if want is None:
            continue
        if want.endswith("*"):
            if not got.startswith(want[:-1]):
                return False
        elif want != got:
            return False
    return True


def sample_request(path: DescriptorPath) -> RequestView:
    """A request that should produce ``path``: every fixed value filled in, others made up."""
    headers = {":method": "GET", ":path": "/", ":authority": "example"}
    remote = "192.0.2.10"
    src, dst = "ingress", "outbound|8080||frontend.default.svc.cluster.local"
    for key, value in path:
        if value is None:
            concrete = "sample"
        else:
            concrete = value.rstrip("*") + ("x" if value.endswith("*") else "")
        if key == "remote_address":
            remote = concrete if value is not None else remote
        elif key == "source_cluster":
            src = concrete
        elif key == "destination_cluster":
            dst = concrete
        elif key in _HEADER_KEYS:
            headers[_HEADER_KEYS[key]] = concrete
        elif key == "path_prefix":
            headers[":path"] = concrete + "/sample"
        elif key.startswith("header."):
            headers[key[len("header."):].lower()] = concrete
    return RequestView(headers=headers, remote_address=remote, source_cluster=src,
                       destination_cluster=dst)


def _render(path: DescriptorPath) -> str:
    return " > ".join(k if v is None else f"{k}={v}" for k, v in path)
