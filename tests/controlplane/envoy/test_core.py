"""controlplane.envoy.core: the small values every builder shares."""

from __future__ import annotations

from envoy.extensions.filters.http.router.v3.router_pb2 import Router

from controlplane.envoy.core import duration, envoy_grpc, pack, socket_address, typed_extension


def test_duration_parses_protobuf_json_form() -> None:
    """"0.25s" becomes 0 s + 250 ms; whole seconds have no nanos."""
    quarter = duration("0.25s")
    assert (quarter.seconds, quarter.nanos) == (0, 250_000_000)
    assert (duration("15s").seconds, duration("15s").nanos) == (15, 0)


def test_socket_address_is_tcp_host_and_port() -> None:
    """A socket address carries host and port_value."""
    address = socket_address("authz", 9191)
    assert address.socket_address.address == "authz"
    assert address.socket_address.port_value == 9191


def test_pack_uses_the_type_url_envoy_expects() -> None:
    """typed_config's type URL is type.googleapis.com/<full name> and unpacks back."""
    packed = pack(Router())
    assert packed.type_url == "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    assert packed.Is(Router.DESCRIPTOR)


def test_typed_extension_names_its_config() -> None:
    """A typed extension has the given name and the packed config."""
    ext = typed_extension("envoy.filters.http.router", Router())
    assert ext.name == "envoy.filters.http.router"
    assert ext.typed_config.Is(Router.DESCRIPTOR)


def test_envoy_grpc_timeout_is_optional() -> None:
    """envoy_grpc names the cluster; a timeout is set only when given."""
    assert envoy_grpc("mixer_authz").envoy_grpc.cluster_name == "mixer_authz"
    assert not envoy_grpc("mixer_authz").HasField("timeout")
    assert envoy_grpc("mixer_authz", "0.5s").timeout.nanos == 500_000_000
