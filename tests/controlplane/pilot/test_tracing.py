"""``Context.tracing``: every generated HTTP connection manager traces over OTLP/gRPC, or none."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)

from controlplane.envoy.listeners import HCM, OPENTELEMETRY
from controlplane.envoy.model import TRACING_CLUSTER, Endpoint
from controlplane.mesh import load_mesh
from controlplane.mesh.model import Mesh
from controlplane.pilot import Context, ProxyResources, generate_all

DEMO = Path(__file__).resolve().parents[1] / "mesh" / "testdata" / "demo"
COLLECTOR = Endpoint("jaeger", 4317)


@pytest.fixture(scope="module")
def demo() -> Mesh:
    return load_mesh(DEMO)


def _hcms(resources: ProxyResources) -> list[HttpConnectionManager]:
    out = []
    for listener in resources.listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name == HCM:
                    hcm = HttpConnectionManager()
                    network_filter.typed_config.Unpack(hcm)
                    out.append(hcm)
    return out


def test_every_hcm_traces_to_the_collector_when_set(demo: Mesh) -> None:
    """With a collector, each proxy's every HCM has the OpenTelemetry tracer named after the
    workload (canonical name.namespace), and a mixer_tracing cluster points at the collector."""
    generated = generate_all(demo, Context(mtls=True, tracing=COLLECTOR))
    names = {}
    for key, resources in generated.items():
        hcms = _hcms(resources)
        assert hcms, key
        for hcm in hcms:
            assert hcm.tracing.provider.name == OPENTELEMETRY, key
            config = OpenTelemetryConfig()
            hcm.tracing.provider.typed_config.Unpack(config)
            assert config.grpc_service.envoy_grpc.cluster_name == TRACING_CLUSTER
            names[key] = config.service_name
        [cluster] = [c for c in resources.clusters if c.name == TRACING_CLUSTER]
        sock = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        assert (sock.socket_address.address, sock.socket_address.port_value) == (
            "jaeger", 4317)
        # OTLP is gRPC: the collector cluster must speak HTTP/2.
        assert cluster.typed_extension_protocol_options
    assert names["frontend-0.default"] == "frontend.default"
    assert names["backend-0.default"] == "backend.default"


def test_no_tracing_by_default(demo: Mesh) -> None:
    """Without a collector no HCM traces and there is no tracing cluster."""
    for key, resources in generate_all(demo, Context(mtls=True)).items():
        assert all(not hcm.HasField("tracing") for hcm in _hcms(resources)), key
        assert TRACING_CLUSTER not in {c.name for c in resources.clusters}, key
