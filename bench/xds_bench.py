"""xDS benchmark: 100 simulated Envoys on one ``mixer pilot`` (in one process), one edit.

A generated mesh has 100 client workloads whose Sidecars all reach one ``backend`` service.
Each simulated client speaks SotW ADS the way Envoy does (CDS, then EDS by cluster name, LDS,
then RDS by route name; every response ACKed). After all are synced, the backend's
VirtualService file is edited (a new timeout): that changes every client's route table, so
every client gets one RDS push. Reported, over a few rounds:

- edit -> last ACK: from the file write to the 100th client's ACK of the new routes (includes
  the reload poll interval and debounce, ~0.1 s each: what a user waits for);
- RSS per proxy: the process's resident memory growth from before the clients connected,
  divided by 100 (server state and client stubs together);
- CPU per push: process CPU between the edit and the last ACK, divided by the pushes (server
  and simulated clients together, so an upper bound for the server).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from bench.harness import print_table
from controlplane.xds.app import Pilot, PilotSettings
from controlplane.xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE

CLIENTS = 100
ROUNDS = 5

_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-0, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 9101}, labels: {app: backend}, serviceAccount: backend}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: clients, namespace: default}
spec:
  workloadSelector: {labels: {role: client}}
  egress:
    - port: {number: 9000, protocol: HTTP, name: http}
      bind: 127.0.0.1
      captureMode: NONE
      hosts: [./backend.default.svc.cluster.local]
"""
_CLIENT = """\
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-{i}, namespace: default}}
spec: {{address: 127.0.0.{j}, labels: {{app: client-{i}, role: client}}, serviceAccount: client}}
"""
_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend]
  http:
    - route: [{{destination: {{host: backend}}}}]
      timeout: {timeout}s
"""


def write_mesh(directory: Path) -> None:
    """The benchmark mesh: one backend, ``CLIENTS`` client workloads."""
    text = _SERVICE + "".join(_CLIENT.format(i=i, j=i % 250 + 1) for i in range(CLIENTS))
    (directory / "mesh.yaml").write_text(text)
    (directory / "vs.yaml").write_text(_VS.format(timeout=1))


def _rss_kib() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() // 1024


class Client:
    """One simulated Envoy: requests like Envoy, ACKs everything, remembers RDS versions."""

    def __init__(self, channel: grpc.aio.Channel, name: str) -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.name = name
        self.route_version = ""
        self.acked = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: The names requested for EDS and RDS (learned from the CDS and LDS responses).
        self._names: dict[str, list[str]] = {}

    async def run(self) -> None:
        first = DiscoveryRequest(type_url=CLUSTER)
        first.node.id = f"sidecar~127.0.0.1~{self.name}.default~default.svc.cluster.local"
        await self.call.write(first)
        await self.call.write(DiscoveryRequest(type_url=LISTENER))
        async for response in self.call:
            await self.call.write(self._ack(response))
            follow = self._follow_up(response)
            if follow is not None:
                await self.call.write(follow)
            if response.type_url == ROUTE:
                self.route_version = response.version_info
                self.acked.set()

    def _ack(self, response: DiscoveryResponse) -> DiscoveryRequest:
        names: list[str] = []
        if response.type_url in (ENDPOINT, ROUTE):
            names = self._names.get(response.type_url, [])
        return DiscoveryRequest(type_url=response.type_url, version_info=response.version_info,
                                response_nonce=response.nonce, resource_names=names)

    def _follow_up(self, response: DiscoveryResponse) -> DiscoveryRequest | None:
        if response.type_url == CLUSTER and ENDPOINT not in self._names:
            names = [_cluster_name(packed.value) for packed in response.resources]
            self._names[ENDPOINT] = names
            return DiscoveryRequest(type_url=ENDPOINT, resource_names=names)
        if response.type_url == LISTENER and ROUTE not in self._names:
            names = []
            for packed in response.resources:
                listener = Listener()
                packed.Unpack(listener)
                for chain in listener.filter_chains:
                    hcm = HttpConnectionManager()
                    chain.filters[0].typed_config.Unpack(hcm)
                    if hcm.HasField("rds"):
                        names.append(hcm.rds.route_config_name)
            self._names[ROUTE] = names
            return DiscoveryRequest(type_url=ROUTE, resource_names=names)
        return None


def _cluster_name(serialized: bytes) -> str:
    cluster = Cluster()
    cluster.ParseFromString(serialized)
    return str(cluster.name)


async def _bench(directory: Path) -> list[list[object]]:
    write_mesh(directory)
    pilot = Pilot(PilotSettings(mesh=directory, listen="127.0.0.1:0", admin="127.0.0.1:0"))
    running = await pilot.start()
    channel = grpc.aio.insecure_channel(running.xds)
    rss_before = _rss_kib()
    clients = [Client(channel, f"client-{i}") for i in range(CLIENTS)]
    for client in clients:
        client.task = asyncio.create_task(client.run())
    await asyncio.wait_for(asyncio.gather(*(c.acked.wait() for c in clients)), 60)
    rss_per_proxy = (_rss_kib() - rss_before) / CLIENTS
    rows: list[list[object]] = []
    latencies, cpus = [], []
    for round_ in range(ROUNDS):
        for client in clients:
            client.acked.clear()
        old = clients[0].route_version
        cpu0, t0 = time.process_time(), time.perf_counter()
        (directory / "vs.yaml").write_text(_VS.format(timeout=2 + round_))
        await asyncio.wait_for(asyncio.gather(*(c.acked.wait() for c in clients)), 30)
        latency = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        assert all(c.route_version != old for c in clients)
        latencies.append(latency)
        cpus.append(cpu / CLIENTS)
    rows.append([CLIENTS, f"{statistics.median(latencies) * 1000:.0f}",
                 f"{max(latencies) * 1000:.0f}", f"{rss_per_proxy:.0f}",
                 f"{statistics.median(cpus) * 1e6:.0f}"])
    for client in clients:
        if client.task is not None:
            client.task.cancel()
    await channel.close()
    await running.stop(0)
    return rows


def main() -> None:
    """Run the benchmark and print its table."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(_bench(Path(tmp)))
    print_table(f"xDS: one VirtualService edit pushed to {CLIENTS} proxies ({ROUNDS} rounds)",
                ["proxies", "edit->last ACK p50 ms", "max ms", "RSS/proxy KiB",
                 "CPU/push us"], rows)


if __name__ == "__main__":
    main()
