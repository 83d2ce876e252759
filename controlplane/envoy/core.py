"""Small values every builder needs: addresses, durations, typed extension configs.

They mirror ``envoy.config.core.v3`` (``Address``, ``TypedExtensionConfig``) and the
well-known types Envoy embeds (``Duration``, ``Any``), so the builders read as the config does.
"""

from __future__ import annotations

from envoy.config.core.v3.address_pb2 import Address
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message


def duration(text: str) -> Duration:
    """A ``Duration`` from protobuf's JSON form (``"0.25s"``, ``"15s"``)."""
    out = Duration()
    out.FromJsonString(text)
    return out


def socket_address(host: str, port: int) -> Address:
    """A TCP ``Address`` (``socket_address`` with ``port_value``)."""
    out = Address()
    out.socket_address.address = host
    out.socket_address.port_value = port
    return out


def pack(message: Message) -> Any:
    """``message`` in an ``Any`` (``type.googleapis.com/<name>``), as ``typed_config`` wants."""
    out = Any()
    out.Pack(message)
    return out


def typed_extension(name: str, config: Message) -> TypedExtensionConfig:
    """A named extension with its typed config (tracers, custom cluster types...)."""
    return TypedExtensionConfig(name=name, typed_config=pack(config))


def envoy_grpc(cluster_name: str, timeout: str | None = None) -> GrpcService:
    """A ``GrpcService`` over Envoy's own gRPC client (faster here than ``google_grpc``)."""
    out = GrpcService()
    out.envoy_grpc.cluster_name = cluster_name
    if timeout is not None:
        out.timeout.CopyFrom(duration(timeout))
    return out
