"""controlplane.envoy.render: protobuf's JSON mapping, declaration order, pinned defaults."""

from __future__ import annotations

import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthz, ExtAuthzPerRoute
from google.protobuf import json_format

from controlplane.envoy.core import pack
from controlplane.envoy.filters import ext_authz_filter
from controlplane.envoy.listeners import tracing_config
from controlplane.envoy.model import MixerServices
from controlplane.envoy.render import message_to_data, to_yaml, yaml_text


def test_any_gets_its_type_from_the_json_mapping() -> None:
    """A packed config renders as '@type' first, then the inner message's fields."""
    data = message_to_data(ext_authz_filter(MixerServices()))
    typed = data["typed_config"]
    assert isinstance(typed, dict)
    assert next(iter(typed)) == "@type"
    assert typed["@type"] == (
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    assert typed["transport_api_version"] == "V3"


def test_fields_follow_the_proto_declaration_order() -> None:
    """Keys come in .proto declaration order, not field-number or build order."""
    c = Cluster(name="c", lb_policy=Cluster.RANDOM, type=Cluster.STRICT_DNS)
    c.connect_timeout.FromJsonString("1s")
    assert list(message_to_data(c)) == ["name", "type", "connect_timeout", "lb_policy"]


def test_choices_at_their_zero_value_stay_visible() -> None:
    """failure_mode_allow: false and lb_policy ROUND_ROBIN are printed though proto3 drops them."""
    authz = message_to_data(pack(ExtAuthz()))
    assert authz["failure_mode_allow"] is False
    assert message_to_data(Cluster(name="c"))["lb_policy"] == "ROUND_ROBIN"
    plain = json_format.MessageToDict(Cluster(name="c"))
    assert "lbPolicy" not in plain


def test_map_and_struct_keys_are_sorted() -> None:
    """Map entries and Struct keys are sorted, so the output never depends on map order."""
    route = ExtAuthzPerRoute()
    route.check_settings.context_extensions.update({"z": "1", "a": "2", "m": "3"})
    ext = message_to_data(route)["check_settings"]
    assert isinstance(ext, dict) and list(ext["context_extensions"]) == ["a", "m", "z"]


def test_rendered_yaml_parses_back_to_the_same_message() -> None:
    """to_yaml is lossless: parsing the YAML with the JSON mapping gives the message back."""
    c = Cluster(name="c", type=Cluster.STATIC)
    c.connect_timeout.FromJsonString("0.25s")
    text = to_yaml(c, "# header\n")
    assert text.startswith("# header\nname: c\n")
    assert json_format.ParseDict(yaml.safe_load(text), Cluster()) == c
    assert "connect_timeout: 0.25s" in text


def test_durations_and_whole_doubles_in_shortest_form() -> None:
    """0.500s is written 0.5s, 1.000s 1s; a whole double 100.0 is written 100."""
    c = Cluster(name="c")
    c.connect_timeout.FromJsonString("1.5s")
    assert message_to_data(c)["connect_timeout"] == "1.5s"
    c.connect_timeout.FromJsonString("2s")
    assert message_to_data(c)["connect_timeout"] == "2s"
    sampling = message_to_data(tracing_config("svc"))["random_sampling"]
    assert sampling == {"value": 100}


def test_yaml_text_keeps_key_order() -> None:
    """Plain data keeps its key order (block style)."""
    assert yaml_text({"b": 1, "a": [1]}) == "b: 1\na:\n- 1\n"
