"""controlplane.envoy.snippets: the pieces for an Envoy someone else configures."""

from __future__ import annotations

import yaml

from controlplane.envoy.model import Endpoint, MeshTls, MixerServices, Upstream, Workload
from controlplane.envoy.ratelimit_actions import action_for
from controlplane.envoy.snippets import snippets


def _sections(text: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for part in text.split("# --- ")[1:]:
        title, _, body = part.partition("\n")
        out[title] = yaml.safe_load(body)
    return out


def test_every_section_is_yaml_under_a_title_saying_where_it_goes() -> None:
    """Node, clusters, filters, access log, per-route settings and rate limits, each parseable."""
    actions = ((action_for("remote_address", None),),)
    sections = _sections(snippets(MixerServices(), Workload("web"), "web", actions))
    titles = list(sections)
    assert titles[0].startswith("bootstrap node")
    node = sections[titles[0]]
    assert isinstance(node, dict) and node["node"]["cluster"] == "web.default"
    filters = sections[titles[2]]
    assert isinstance(filters, list)
    assert [f["name"] for f in filters][-2:] == ["envoy.filters.http.ext_authz",
                                                "envoy.filters.http.ratelimit"]
    assert filters[-1]["typed_config"]["failure_mode_deny"] is False
    limits = sections[titles[-1]]
    assert titles[-1] == "virtual_host.rate_limits: derived from domain 'web'"
    assert limits == [{"actions": [{"remote_address": {}}]}]


def test_without_actions_the_last_section_says_how_to_get_them() -> None:
    """No actions: an empty rate_limits section pointing at --ratelimit-config."""
    sections = _sections(snippets(MixerServices(), Workload("web"), "web", ()))
    last = list(sections)[-1]
    assert "--ratelimit-config" in last and sections[last] == []


def test_with_a_certificate_the_mtls_sockets_are_included() -> None:
    """tls: the strip filter, the STRICT server socket and one ISTIO_MUTUAL socket per upstream."""
    up = Upstream("api", Endpoint("10.0.0.2", 15006))
    sections = _sections(snippets(MixerServices(), Workload("web"), "web", (),
                                  tls=MeshTls("/certs/web"), upstreams=[up]))
    by_start = {title.split(":")[0]: body for title, body in sections.items()}
    server = by_start["inbound filter_chains[].transport_socket"]
    assert isinstance(server, dict)
    assert server["typed_config"]["require_client_certificate"] is True
    client = by_start[f"clusters[{up.cluster_name}].transport_socket"]
    assert isinstance(client, dict) and client["typed_config"]["sni"] == up.sni
    assert "inbound filter_chains[].transport_socket" not in {
        t.split(":")[0] for t in _sections(snippets(MixerServices(), Workload("web"), "web", ()))}
