"""Helpers of the real-Envoy tests: the demo mesh on free ports, certificates, bootstraps."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controlplane.ca.files import write_bundle
from controlplane.ca.identity import SpiffeId
from controlplane.ca.store import init_ca
from controlplane.envoy.model import Endpoint, Workload
from controlplane.envoy.render import to_yaml
from controlplane.xds.bootstrap import xds_bootstrap
from envoy_mixer.dev import procs
from tests.waits import until

DEMO = Path(__file__).resolve().parents[1] / "mesh" / "testdata" / "demo"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
#: The demo's bound ports (sidecar ingress/egress, the apps) that a test moves to free ones.
DEMO_PORTS = (8090, 8091, 8092, 8100, 8101)
#: The ingress gateway's port (8080 is also the services' logical port: only the Gateway's
#: server is moved).
GATEWAY_PORT = 8080


@dataclass(frozen=True)
class MeshDir:
    """A copy of the demo mesh whose bound ports are free ones (``ports[demo_port]``)."""

    path: Path
    ports: dict[int, int]


def demo_mesh(dest: Path) -> MeshDir:
    """Copy the demo mesh into ``dest`` with each bound port replaced by a free one."""
    shutil.copytree(DEMO, dest)
    ports = {p: procs.free_port() for p in (*DEMO_PORTS, GATEWAY_PORT)}
    for name in ("sidecars.yaml", "workloads.yaml"):
        text = (dest / name).read_text()
        for old, new in ports.items():
            if old != GATEWAY_PORT:
                text = text.replace(str(old), str(new))
        (dest / name).write_text(text)
    gateways = dest / "gateways.yaml"
    gateways.write_text(gateways.read_text().replace(
        f"number: {GATEWAY_PORT}", f"number: {ports[GATEWAY_PORT]}"))
    # mTLS as mixer up runs it: STRICT mesh-wide, ISTIO_MUTUAL to the backend (the policy
    # admits the frontend by its certificate's principal).
    rules = dest / "destinationrules.yaml"
    rules.write_text(rules.read_text().replace("tls: {mode: DISABLE}", "tls: {mode: ISTIO_MUTUAL}"))
    shutil.copy(EXAMPLES / "peer-authentication.yaml", dest / "peer-authentication.yaml")
    return MeshDir(dest, ports)


def issue(ca_dir: Path, out: Path, namespace: str, account: str) -> Path:
    """A bootstrap certificate for ``namespace``/``account`` in ``out`` (CA made if needed)."""
    ca = init_ca(ca_dir, "cluster.local", clock=lambda: datetime.now(UTC)).ca
    return write_bundle(out, ca.issue(SpiffeId("cluster.local", namespace, account),
                                      now=datetime.now(UTC)))


def bootstrap(workload: str, app: str, xds: int, admin: int, cert_dir: Path | None, *,
              namespace: str = "default", proxy_type: str = "sidecar",
              delta: bool = False) -> str:
    """The minimal bootstrap of the proxy of WorkloadEntry ``workload``."""
    ident = Workload(name=app, namespace=namespace, pod=workload)
    san = "spiffe://cluster.local/ns/istio-system/sa/istiod" if cert_dir else None
    return to_yaml(xds_bootstrap(ident, proxy_type, xds=Endpoint("127.0.0.1", xds),
                                 admin=Endpoint("127.0.0.1", admin), cert_dir=cert_dir,
                                 server_san=san, delta=delta))


def app_process(name: str, port: int, log: Path, *call: str) -> procs.ManagedProcess:
    """The demo HTTP app on ``port`` (``call``: ``--call URL --call-host HOST``)."""
    return procs.ManagedProcess(
        name=f"app {name}", log_path=log,
        argv=[sys.executable, "-m", "envoy_mixer.dev.demo.app", "--name", name,
              "--port", str(port), *call],
        ready=lambda: procs.tcp_ok(port))


def http(url: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    """GET ``url`` (with ``Host``): status, headers (lower-case) and body."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def get_json(url: str) -> object:
    """GET ``url`` as JSON."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``check`` until it holds (or fail after ``timeout`` seconds); a check that raises
    an I/O or parse error (a process not up yet) counts as not yet."""
    def settled() -> bool:
        try:
            return check()
        except (OSError, ValueError, KeyError):
            return False

    until(settled, timeout, what=what or "condition")
