"""``mixer up`` on a mesh directory: the --port-base copy, which files the services serve, and a
user's own mesh (their app, our Envoy and control plane)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.envoy.mesh import local_mesh
from controlplane.mesh import load_mesh
from envoy_mixer.dev import procs
from envoy_mixer.dev.meshup import pilot_ports, render_shifted, service_files
from envoy_mixer.dev.up import http_get
from tests.waits import until

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "examples" / "mesh"


def test_port_base_copy_moves_the_bound_ports_as_local_mesh_lays_them_out(
    tmp_path: Path,
) -> None:
    """The shifted demo binds where local_mesh(N) says; logical ports and rule files stay."""
    src = Path(shutil.copytree(SHIPPED, tmp_path / "src"))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    written = render_shifted(src, tmp_path / "copy", 30000)
    assert sorted(written) == sorted(before)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the user's files
    layout = local_mesh(30000)
    mesh = load_mesh(tmp_path / "copy")
    ports = {w.name: dict(w.ports) for w in mesh.workloads}
    assert ports["frontend-0"] == {"http": layout.frontend.inbound.port}
    assert ports["istio-ingressgateway"] == {"http": layout.ingress.port}
    frontend = next(s for s in mesh.sidecars if s.origin.name == "frontend")
    assert frontend.ingress[0].default_endpoint == f"127.0.0.1:{layout.frontend.app.port}"
    assert frontend.egress[0].port is not None
    assert frontend.egress[0].port.number == layout.frontend.outbound.port
    backend = mesh.service("backend.default.svc.cluster.local")
    assert backend is not None and backend.ports[0].number == 8080  # logical: unchanged
    for name in ("policy.yaml", "ratelimit.yaml", "telemetry.yaml", "virtualservices.yaml"):
        assert (tmp_path / "copy" / name).read_bytes() == before[name], name
    # Only a changed file is written again; a removed one is removed.
    assert render_shifted(src, tmp_path / "copy", 30000) == []
    (src / "telemetry.yaml").unlink()
    assert render_shifted(src, tmp_path / "copy", 30000) == []
    assert not (tmp_path / "copy" / "telemetry.yaml").exists()


def test_services_serve_the_mesh_files_that_hold_their_kinds(tmp_path: Path) -> None:
    """authz gets the one policy file (the directory when policies are spread), ratelimit and
    telemetry the files holding their configs (None when the mesh has none)."""
    files = service_files(load_mesh(SHIPPED), SHIPPED)
    assert (files.policy, files.ratelimit, files.telemetry) == (
        SHIPPED / "policy.yaml", SHIPPED / "ratelimit.yaml", SHIPPED / "telemetry.yaml")
    mesh = Path(shutil.copytree(SHIPPED, tmp_path / "mesh"))
    (mesh / "ratelimit.yaml").unlink()
    (mesh / "telemetry.yaml").unlink()
    shutil.copy(mesh / "policy.yaml", mesh / "more-policy.yaml")
    (mesh / "policy.yaml").write_text((mesh / "policy.yaml").read_text().replace(
        "name: ", "name: copy-"))
    files = service_files(load_mesh(mesh), mesh)
    assert (files.policy, files.ratelimit, files.telemetry) == (mesh, None, None)


def _free_base() -> int:
    """A port base whose services and control plane ports (N+40..N+47) are free now."""
    for base in range(41000, 60000, 50):
        if not any(procs.port_in_use(base + offset) for offset in range(40, 48)):
            return base
    raise RuntimeError("no free port range")


_USER_MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: [shop.shop.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: shop}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: shop-0, namespace: shop}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: shop}}
  serviceAccount: shop
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: shop, namespace: shop}}
spec:
  ingress:
    - port: {{number: {inbound}, protocol: HTTP, name: http}}
      bind: 127.0.0.1
      defaultEndpoint: 127.0.0.1:{app}
"""

_DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secrets, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/secret"]}}]}]
"""


@pytest.mark.slow
def test_a_users_mesh_gets_the_control_plane_and_an_envoy_not_its_app(tmp_path: Path) -> None:
    """--mesh DIR: the user's app (started by the user) is served through the Envoy mixer up
    runs for its WorkloadEntry (PERMISSIVE: no PeerAuthentication), and a policy added to the
    directory later applies."""
    app_port, inbound = procs.free_port(), procs.free_port()
    base = _free_base()
    mesh = tmp_path / "mesh"
    mesh.mkdir()
    (mesh / "shop.yaml").write_text(_USER_MESH.format(app=app_port, inbound=inbound))
    app = procs.ManagedProcess(
        name="user app", log_path=tmp_path / "app.log",
        argv=[sys.executable, "-m", "envoy_mixer.dev.demo.app", "--name", "shop",
              "--port", str(app_port)], ready=lambda: procs.tcp_ok(app_port)).start()
    out = tmp_path / "up.out"
    with out.open("w") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "envoy_mixer.cli", "up", "--mesh", str(mesh),
             "--port-base", str(base), "--run-dir", str(tmp_path / "run")],
            stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        app.wait_ready(15)
        until(lambda: "healthy after" in out.read_text() or up.poll() is not None, 60)
        assert up.poll() is None, out.read_text()
        text = out.read_text()
        assert "shop-0.shop" in text and "demo frontend" not in text and "curl" not in text
        children = json.loads((tmp_path / "run" / "pids.json").read_text())["children"]
        assert set(children) == {"authz", "ratelimit", "telemetry", "pilot", "envoy shop-0.shop"}
        url = f"http://127.0.0.1:{inbound}"
        reply = http_get(url + "/secret")
        assert reply.status == 200 and json.loads(reply.body)["service"] == "shop"
        (mesh / "policy.yaml").write_text(_DENY)
        # With no policy file at start, authz serves the whole directory, so a new one is read.
        until(lambda: http_get(url + "/secret").status == 403, 20)
        assert pilot_ports(base)[1] == base + 47
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(20)
            except subprocess.TimeoutExpired:
                up.kill()
        app.stop()
    assert not procs.port_in_use(inbound)
