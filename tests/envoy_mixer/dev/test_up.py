"""``mixer up``: clear start-up errors, and the whole mesh end to end (real Envoys, services,
the control plane).

The end-to-end tests share one mesh (module fixture) started exactly as a user does, as a
``mixer up`` subprocess, and stopped with SIGTERM by the last test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.envoy.mesh import local_mesh, service_admin_ports
from envoy_mixer.dev import procs
from envoy_mixer.dev.meshup import (
    pilot_ports,
    plan,
    prepare_proxies,
    rotate_until_stopped,
    start,
)
from envoy_mixer.dev.up import UpError, find_examples, http_get, mesh_ports
from tests.waits import until

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
PROXIES = {"frontend-0.default", "backend-0.default", "istio-ingressgateway.istio-system",
           "istio-egressgateway.istio-system"}


def _ports(base: int) -> dict[int, str]:
    return mesh_ports(local_mesh(base), service_admin_ports(base), pilot_ports(base))


def _free_base() -> int:
    """A port base whose whole ``mixer up`` layout (base..base+47) is free right now."""
    for _ in range(200):
        base = random.randrange(20000, 40000, 50)
        if not any(procs.port_in_use(p) for p in _ports(base)):
            return base
    raise RuntimeError("no free port range")


def _examples(tmp: Path) -> Path:
    """A private, editable copy of examples/ (the demo mesh in mesh/ too)."""
    return Path(shutil.copytree(EXAMPLES, tmp / "examples"))


# ---------------------------------------------------------------------------- start-up errors

def test_missing_examples_are_a_clear_error(tmp_path: Path) -> None:
    """Without a demo mesh, up names what it looked for and where."""
    with pytest.raises(UpError, match=r"no demo mesh \(mesh/\*.yaml\) in "):
        find_examples(tmp_path)


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    """A busy ingress port is reported with its proxy and holder before anything starts."""
    base = _free_base()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        with pytest.raises(UpError, match=rf"port {base} \(istio-ingressgateway.istio-system "
                                          rf"Envoy\) is held by pid {os.getpid()} .*--port-base"):
            start(mesh_dir=_examples(tmp_path) / "mesh", run_dir=tmp_path / "run", demo=True,
                  port_base=base)
    assert not (tmp_path / "run" / "ca").exists()
    assert not (tmp_path / "run" / "pids.json").exists()


def test_missing_envoy_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Envoy binary: up says how to install it."""
    monkeypatch.setenv("ENVOY_BIN", str(tmp_path / "no-envoy"))
    with pytest.raises(UpError, match=r"Envoy is missing: install it with"):
        start(mesh_dir=_examples(tmp_path) / "mesh", run_dir=tmp_path / "run", demo=True,
              port_base=_free_base())


def test_bad_mesh_file_is_a_clear_error(tmp_path: Path) -> None:
    """A broken file of the mesh stops up with the file, line and field of the problem; the
    user's file is the one named, whatever --port-base does."""
    mesh = _examples(tmp_path) / "mesh"
    limits = mesh / "ratelimit.yaml"
    limits.write_text(limits.read_text().replace("unit: minute", "unit: fortnight", 1))
    with pytest.raises(UpError) as info:
        plan(mesh_dir=mesh, run_dir=tmp_path / "run", demo=True, port_base=_free_base())
    text = str(info.value)
    assert text.startswith("bad mesh file:")
    assert "ratelimit.yaml: invalid rate limit unit 'fortnight' (line" in text


def test_bad_peer_authentication_is_a_clear_error(tmp_path: Path) -> None:
    """A broken peer-authentication.yaml stops up with its file and field."""
    mesh = _examples(tmp_path) / "mesh"
    path = mesh / "peer-authentication.yaml"
    path.write_text(path.read_text().replace("mode: STRICT", "mode: SOMETIMES"))
    with pytest.raises(UpError, match=r"bad mesh file:\n.*peer-authentication.yaml"):
        plan(mesh_dir=mesh, run_dir=tmp_path / "run", demo=True)


def test_first_start_creates_the_ca_and_a_certificate_per_proxy(tmp_path: Path) -> None:
    """The run dir gets ca/, certs/<proxy>/ and a bootstrap per WorkloadEntry; a second start
    keeps the CA and the certificates; the demo is STRICT."""
    mesh = _examples(tmp_path) / "mesh"
    run = plan(mesh_dir=mesh, run_dir=tmp_path / "run", demo=True)
    keep = prepare_proxies(run)
    assert set(keep) == set(run.proxies) == PROXIES
    root = tmp_path / "run"
    assert (root / "ca" / "ca.json").is_file()
    for key in PROXIES:
        assert (root / "certs" / key / "default.json").is_file(), key
        assert "xds-grpc" in (root / f"envoy-{key}.yaml").read_text(), key
    first_root = (root / "ca" / "root-cert.pem").read_bytes()
    chain = (root / "certs" / "frontend-0.default" / "cert-chain.pem").read_bytes()
    assert run.modes() == {"backend-0.default": "STRICT", "frontend-0.default": "STRICT"}
    assert run.proxies["istio-ingressgateway.istio-system"].admin == local_mesh().ingress_admin.port

    prepare_proxies(plan(mesh_dir=mesh, run_dir=root, demo=True))
    assert (root / "ca" / "root-cert.pem").read_bytes() == first_root
    assert (root / "certs" / "frontend-0.default" / "cert-chain.pem").read_bytes() == chain


def test_rotation_thread_keeps_certificates_and_stops_when_asked(tmp_path: Path) -> None:
    """The rotation loop leaves fresh certificates alone and returns once stop is set."""
    run = plan(mesh_dir=_examples(tmp_path) / "mesh", run_dir=tmp_path / "run", demo=True)
    keep = prepare_proxies(run)
    chain = (tmp_path / "run" / "certs" / "backend-0.default" / "cert-chain.pem").read_bytes()
    thread = threading.Thread(target=rotate_until_stopped, args=(keep, run.stopping))
    thread.start()
    run.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert (tmp_path / "run" / "certs" / "backend-0.default" / "cert-chain.pem").read_bytes() \
        == chain


def test_without_a_peer_authentication_file_the_mesh_is_permissive(tmp_path: Path) -> None:
    """No peer-authentication.yaml: Istio's mode when no policy applies (PERMISSIVE)."""
    mesh = _examples(tmp_path) / "mesh"
    (mesh / "peer-authentication.yaml").unlink()
    run = plan(mesh_dir=mesh, run_dir=tmp_path / "run", demo=True)
    assert set(run.modes().values()) == {"PERMISSIVE"}


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_up_check_smoke(tmp_path: Path) -> None:
    """`mixer up --check` brings the demo mesh up on the control plane, passes its three
    requests, exits 0 and leaves no port behind.

    How long it takes is a benchmark figure (bench/cli_bench.py), not asserted here.
    """
    base = _free_base()
    result = subprocess.run(
        [sys.executable, "-m", "envoy_mixer.cli", "up", "--check", "--port-base", str(base),
         "--examples", str(_examples(tmp_path)), "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=90, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("PASS allowed", "PASS denied", "PASS rate-limited", "curl -i http://",
                 "/metrics", "/graph", "mTLS: backend STRICT, frontend STRICT",
                 "istio-ingressgateway.istio-system", f"xDS 127.0.0.1:{base + 46}"):
        assert line in result.stdout, line
    assert "(healthy after " in result.stdout
    assert json.loads((tmp_path / "run" / "pilot.json").read_text())["tls"] is True
    assert not procs.port_in_use(base), "ingress still listening after --check"


class Mesh:
    """A running ``mixer up`` subprocess and its addresses."""

    def __init__(self, proc: subprocess.Popen[str], base: int, examples: Path, out: Path,
                 run_dir: Path):
        self.proc, self.base, self.examples, self.out = proc, base, examples, out
        self.mesh, self.run_dir = examples / "mesh", run_dir
        self.url = f"http://127.0.0.1:{base}"
        self.telemetry_admin = service_admin_ports(base)["telemetry"]

    def envoy_pids(self) -> dict[str, int]:
        """The Envoys' PIDs from the supervisor's pid file."""
        children = json.loads((self.run_dir / "pids.json").read_text())["children"]
        return {name: pid for name, pid in children.items() if name.startswith("envoy ")}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One `mixer up` for the module; stopped with SIGTERM (the last test checks that)."""
    tmp = tmp_path_factory.mktemp("mesh")
    base = _free_base()
    examples = _examples(tmp)
    out = tmp / "up.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "envoy_mixer.cli", "up", "--port-base", str(base),
             "--examples", str(examples), "--run-dir", str(tmp / "run")],
            stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=tmp,
        )
    running = Mesh(proc, base, examples, out, tmp / "run")
    try:
        until(lambda: "healthy after" in out.read_text() or proc.poll() is not None, 60)
        assert proc.poll() is None, out.read_text()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_policy_allows_and_denies_between_frontend_and_backend(mesh: Mesh) -> None:
    """frontend -> backend: GET /api/* allowed; /admin/* and POST denied by backend's policies."""
    allowed = http_get(mesh.url + "/api/hello")
    assert allowed.status == 200
    body = json.loads(allowed.body)
    assert body["service"] == "frontend"
    assert body["upstream"] == {"status": 200, "body": {
        "service": "backend", "method": "GET", "path": "/api/hello"}}
    # Workload identities travel between proxies only: the client never sees them.
    assert not {h.lower() for h in allowed.headers} & {
        "x-mixer-peer-metadata", "x-mixer-peer-metadata-id"}
    for method_path in ("/admin/users", "/admin"):
        denied = http_get(mesh.url + method_path)
        assert denied.status == 403
        # The ingress let it through; the backend's sidecar denied the frontend's call.
        assert json.loads(denied.body)["upstream"]["status"] == 403
    edge = http_get(mesh.url + "/not-public")
    assert edge.status == 403 and "upstream" not in edge.body


@pytest.mark.slow
def test_rate_limit_at_the_ingress(mesh: Mesh) -> None:
    """/api/limited allows 3 per minute per client at the ingress, then 429 from the RLS."""
    statuses = [http_get(mesh.url + "/api/limited") for _ in range(4)]
    assert [r.status for r in statuses] == [200, 200, 200, 429]
    assert statuses[3].headers["x-envoy-ratelimited"] == "true"
    assert statuses[0].headers["x-ratelimit-limit"].startswith("3")


@pytest.mark.slow
def test_metrics_from_both_reporters_and_a_graph_edge(mesh: Mesh) -> None:
    """/metrics has istio_requests_total from source and destination; /graph has the edge."""
    http_get(mesh.url + "/api/hello")
    admin = f"http://127.0.0.1:{mesh.telemetry_admin}"

    def both_reporters() -> bool:
        text = http_get(admin + "/metrics").body
        lines = [x for x in text.splitlines() if x.startswith("istio_requests_total{")
                 and 'destination_workload="backend"' in x and 'source_workload="frontend"' in x]
        # The ingress strips the frontend's identity from the client's response but still
        # reports it (from the metadata it stashed it in).
        edge = [x for x in text.splitlines() if x.startswith("istio_requests_total{")
                and 'reporter="source"' in x and 'source_workload="istio-ingressgateway"' in x
                and 'destination_workload="frontend"' in x]
        return bool(edge) and any('reporter="source"' in x for x in lines) and any(
            'reporter="destination"' in x for x in lines)

    until(both_reporters, 10)
    graph = json.loads(http_get(admin + "/graph").body)
    pairs = {(e["source"], e["destination"]) for e in graph["edges"]}
    assert ("frontend.default", "backend.default") in pairs
    assert ("istio-ingressgateway.istio-system", "frontend.default") in pairs


@pytest.mark.slow
def test_proxy_status_finds_the_control_plane_in_the_run_dir(mesh: Mesh) -> None:
    """`mixer proxy-status --run-dir` (no --xds) lists every Envoy of the mesh, connected, and
    `mixer proxy-config` shows what was pushed to one."""
    out = subprocess.run(
        [sys.executable, "-m", "envoy_mixer.cli", "proxy-status", "--json",
         "--run-dir", str(mesh.run_dir)], capture_output=True, text=True, check=True,
        timeout=30)
    connected = {p["proxy"] for p in json.loads(out.stdout) if p["connected"]}
    assert connected == PROXIES
    secrets = subprocess.run(
        [sys.executable, "-m", "envoy_mixer.cli", "proxy-config", "secrets",
         "frontend-0.default", "--json", "--run-dir", str(mesh.run_dir)],
        capture_output=True, text=True, check=True, timeout=30)
    # The workload certificate the pilot serves over SDS, to the proxy that proved it.
    assert "spiffe://cluster.local/ns/default/sa/frontend" in secrets.stdout


_TEAPOT = """
    - name: teapot
      match: [{uri: {prefix: /api/teapot}}]
      fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
      route:
        - destination: {host: frontend, port: {number: 8080}}
"""

_DENY_HELLO = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-deny-hello, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/api/hello"]}}]
"""

_NEW_LIMIT = """
  - key: path_prefix
    value: /api/new
    rate_limit:
      unit: minute
      requests_per_unit: 1
"""


@pytest.mark.slow
def test_live_edits_change_behaviour_without_restarting_an_envoy(mesh: Mesh) -> None:
    """A VirtualService fault, a DENY policy and a new rate-limit descriptor path each apply
    while running (pushed over xDS, hot-reloaded by the services); every Envoy keeps its PID.

    The bounds are generous for a loaded machine; the latency itself belongs in bench/.
    """
    before = mesh.envoy_pids()
    assert len(before) == 4
    assert http_get(mesh.url + "/api/teapot").status == 200

    vs = mesh.mesh / "virtualservices.yaml"
    vs.write_text(vs.read_text().replace("""    - name: frontend
      route:""", _TEAPOT.strip("\n") + """
    - name: frontend
      route:""", 1))
    until(lambda: http_get(mesh.url + "/api/teapot").status == 418, 15.0, step=0.1)

    policy = mesh.mesh / "policy.yaml"
    policy.write_text(policy.read_text() + _DENY_HELLO)
    until(lambda: http_get(mesh.url + "/api/hello").status == 403, 15.0, step=0.1)

    # A descriptor path Envoy never sent before: the pilot derives its rate_limits action and
    # pushes the routes; the service has the limit.
    limits = mesh.mesh / "ratelimit.yaml"
    limits.write_text(limits.read_text() + _NEW_LIMIT)
    until(lambda: http_get(mesh.url + "/api/new").status == 429, 15.0, step=0.1)

    assert mesh.envoy_pids() == before
    assert "exited with" not in mesh.out.read_text()


@pytest.mark.slow
def test_peer_authentication_edit_is_pushed_to_the_sidecar(mesh: Mesh) -> None:
    """STRICT refuses plaintext at the backend sidecar; a PERMISSIVE edit admits it with no
    restart, and the frontend still calls it over mTLS (its principal still admits it)."""
    inbound = local_mesh(mesh.base).backend.inbound
    plain = f"http://127.0.0.1:{inbound.port}/api/plain"
    with pytest.raises(OSError):
        http_get(plain)
    before = mesh.envoy_pids()
    policy = mesh.mesh / "peer-authentication.yaml"
    policy.write_text(policy.read_text() + """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend, namespace: default}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: PERMISSIVE}
""")

    def plaintext_answered() -> bool:
        try:
            http_get(plain)  # no certificate, so no principal: the policy's 403 is fine
            return True
        except OSError:
            return False

    until(plaintext_answered, 20, step=0.2)
    assert http_get(mesh.url + "/api/still-mtls").status == 200
    assert mesh.envoy_pids() == before


@pytest.mark.slow
def test_a_killed_service_is_restarted_and_the_mesh_serves_again(mesh: Mesh) -> None:
    """kill -9 of the ratelimit service: the supervisor says so, starts it again (a new PID in
    pids.json) while the ingress keeps answering; the Envoys are left alone."""
    envoys = mesh.envoy_pids()
    pid_file = mesh.run_dir / "pids.json"
    old = json.loads(pid_file.read_text())["children"]["ratelimit"]
    os.kill(old, signal.SIGKILL)

    def back() -> bool:
        pid = json.loads(pid_file.read_text())["children"].get("ratelimit")
        return pid not in (None, old) and "ratelimit is back" in mesh.out.read_text()

    until(back, 20)
    assert "ratelimit exited with" in mesh.out.read_text()
    assert http_get(mesh.url + "/api/limited").status in (200, 429)
    assert mesh.envoy_pids() == envoys


@pytest.mark.slow
def test_sigterm_stops_every_process(mesh: Mesh) -> None:
    """SIGTERM to `mixer up` exits 0 and frees every port of the mesh."""
    pids = mesh.envoy_pids()
    mesh.proc.send_signal(signal.SIGTERM)
    assert mesh.proc.wait(20) == 0
    busy = [p for p in _ports(mesh.base) if procs.port_in_use(p)]
    assert not busy, busy
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
