"""Typed Envoy messages to YAML, through protobuf's own JSON mapping.

:func:`message_to_data` is ``json_format.MessageToDict`` (proto field names, ``@type`` on every
``Any``) with two adjustments that keep the static files readable and stable:

- fields are listed in their ``.proto`` declaration order, map keys (and ``Struct`` keys)
  sorted, so output never depends on a map's internal order;
- the fields in :data:`EXPLICIT_DEFAULTS` are printed even at their zero value. Proto3's JSON
  mapping drops a field holding its default, but a reader of a shipped file must see these
  choices (fail closed / fail open, the load-balancing policy, the codec);
- durations and whole doubles in their shortest form (``0.5s``, not ``0.500s``; ``100``, not
  ``100.0``), as people write them; protobuf parses both forms to the same value.
"""

from __future__ import annotations

from typing import cast

import yaml
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.any_pb2 import Any
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

#: Fields (full proto names) printed even when they hold their zero value.
EXPLICIT_DEFAULTS = frozenset({
    "envoy.config.cluster.v3.Cluster.lb_policy",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    ".codec_type",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz.failure_mode_allow",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit.failure_mode_deny",
    "envoy.extensions.filters.http.ratelimit.v3.RateLimit.stage",
    "envoy.extensions.filters.http.header_to_metadata.v3.Config.KeyValuePair.type",
})

#: Well-known types whose JSON form is not an object of their fields (left as mapped).
_SPECIAL_JSON = frozenset({
    "google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask",
    "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Empty",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int32Value",
    "google.protobuf.Int64Value", "google.protobuf.UInt32Value", "google.protobuf.UInt64Value",
})

Data = dict[str, object]


def message_to_data(message: Message) -> Data:
    """``message`` as plain data (dicts, lists, scalars) in protobuf's JSON mapping."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return cast(Data, _arrange(message, data))


def yaml_text(data: object, header: str = "") -> str:
    """Plain data as block YAML, keys in the order given."""
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def to_yaml(message: Message, header: str = "") -> str:
    """A message (a ``Bootstrap`` for a static file) as YAML, after ``header``."""
    return yaml_text(message_to_data(message), header)


def _arrange(message: Message, data: object) -> object:
    """``data`` (the JSON mapping of ``message``) in declaration order, defaults pinned."""
    # The C (upb) descriptors implement the same API as the pure-Python ones stubs describe.
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    name = descriptor.full_name
    if not isinstance(data, dict) or name in _SPECIAL_JSON:
        return data
    if name == "google.protobuf.Struct":
        return _sorted_struct(data)
    if name == "google.protobuf.Any":
        inner = _unpack(cast(Any, message))
        fields = _arrange(inner, {k: v for k, v in data.items() if k != "@type"})
        return {"@type": data["@type"], **cast(Data, fields)}
    out: Data = {}
    for field in descriptor.fields:
        if field.name in data:
            out[field.name] = _arrange_field(field, getattr(message, field.name),
                                             data[field.name])
        elif field.full_name in EXPLICIT_DEFAULTS:
            out[field.name] = _zero(field)
    return out


def _arrange_field(field: FieldDescriptor, value: object, data: object) -> object:
    if field.message_type is None:
        return _short_number(data)
    if field.message_type.full_name == "google.protobuf.Duration" and isinstance(data, str):
        return _short_duration(data)
    if field.message_type.GetOptions().map_entry:
        return _arrange_map(field.message_type, value, cast(Data, data))
    if field.is_repeated:
        items = cast(list[Message], value)
        return [_arrange(item, item_data)
                for item, item_data in zip(items, cast(list[object], data), strict=True)]
    return _arrange(cast(Message, value), data)


def _arrange_map(entry: Descriptor, value: object, data: Data) -> Data:
    """A map field with its keys sorted (string keys: values of message type arranged too)."""
    keys_are_strings = entry.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING
    values_are_messages = entry.fields_by_name["value"].message_type is not None
    if not (keys_are_strings and values_are_messages):
        return {k: data[k] for k in sorted(data)}
    mapping = cast(dict[str, Message], value)
    return {k: _arrange(mapping[k], data[k]) for k in sorted(data)}


def _short_duration(text: str) -> str:
    """``"0.500s"`` -> ``"0.5s"``, ``"1.000s"`` -> ``"1s"`` (the JSON mapping pads to 3/6/9)."""
    seconds = text.removesuffix("s")
    if "." in seconds:
        seconds = seconds.rstrip("0").rstrip(".")
    return seconds + "s"


def _short_number(data: object) -> object:
    """A whole double as an int (``100.0`` -> ``100``); repeated values element by element."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, list):
        return [_short_number(item) for item in data]
    return data


def _sorted_struct(data: object) -> object:
    if isinstance(data, dict):
        return {k: _sorted_struct(data[k]) for k in sorted(data)}
    if isinstance(data, list):
        return [_sorted_struct(item) for item in data]
    return data


def _unpack(message: Any) -> Message:
    type_name = message.TypeName()
    descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    inner = message_factory.GetMessageClass(descriptor)()
    message.Unpack(inner)
    return inner


def _zero(field: FieldDescriptor) -> object:
    """A field's zero value as the JSON mapping writes it (enums by name)."""
    if field.enum_type is not None:
        return field.enum_type.values_by_number[0].name
    return field.default_value
