"""A real Envoy served by ``mixer pilot --tracing`` sends its spans to the collector (slow)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from envoy_mixer.dev import procs
from tests.controlplane.xds.mesh_run import bootstrap, demo_mesh, eventually, http

pytestmark = pytest.mark.slow

Start = Callable[..., procs.ManagedProcess]
#: OTLP/gRPC's one method; the request is kept as bytes (no OTLP stubs needed to see a name).
_EXPORT = "opentelemetry.proto.collector.trace.v1.TraceService"


@pytest.fixture
def collector() -> Iterator[tuple[int, list[bytes]]]:
    """A fake OTLP/gRPC collector on a free port recording each Export request's bytes."""
    received: list[bytes] = []
    lock = threading.Lock()

    def export(request: bytes, _context: grpc.ServicerContext) -> bytes:
        with lock:
            received.append(request)
        return b""  # an empty ExportTraceServiceResponse

    handler = grpc.method_handlers_generic_handler(_EXPORT, {
        "Export": grpc.unary_unary_rpc_method_handler(export)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, received
    server.stop(0)


def test_pilot_served_sidecar_exports_spans_named_after_the_workload(
    tmp_path: Path, start_envoy: Start, start_mixer: Start, free_port: Callable[[], int],
    collector: tuple[int, list[bytes]],
) -> None:
    """The backend's sidecar, configured only by the pilot, exports a span with the service
    name backend.default for a request to its inbound port (whatever the policy answers)."""
    port, received = collector
    mesh = demo_mesh(tmp_path / "mesh")
    xds, admin, envoy_admin = free_port(), free_port(), free_port()
    # Plaintext and without our services: a span is exported whatever ext_authz answers.
    start_mixer(["pilot", "--mesh", str(mesh.path), "--listen", f"127.0.0.1:{xds}",
                 "--admin", f"127.0.0.1:{admin}", "--tracing", f"127.0.0.1:{port}"], admin)
    start_envoy(bootstrap("backend-0", "backend", xds, envoy_admin, None), envoy_admin,
                name="backend")
    inbound = f"http://127.0.0.1:{mesh.ports[8101]}/api/items"
    eventually(lambda: http(inbound)[0] > 0, what="the pilot-served inbound listener answers")
    # Envoy's tracer flushes every 5 s (or after 5 spans): a few more requests hurry it on.
    for _ in range(5):
        http(inbound)
    eventually(lambda: any(b"backend.default" in r for r in received), timeout=20,
               what="a span from backend.default reached the collector")
