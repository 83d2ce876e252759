"""Real Envoys served by a real ``mixer pilot`` (slow: processes on free ports)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from envoy_mixer.dev import procs
from tests.controlplane.xds.mesh_run import (
    app_process,
    bootstrap,
    demo_mesh,
    eventually,
    get_json,
    http,
    issue,
)

pytestmark = pytest.mark.slow

Start = Callable[..., procs.ManagedProcess]


def _services(start_mixer: Start, free_port: Callable[[], int], mesh: Path) -> list[str]:
    """Start authz, ratelimit and telemetry; return the pilot flags naming them."""
    flags: list[str] = []
    for name, config in (("authz", ["--policy", str(mesh / "policy.yaml")]),
                         ("ratelimit", ["--config", str(mesh / "ratelimit.yaml")]),
                         ("telemetry", [])):
        port, admin = free_port(), free_port()
        start_mixer([name, *config, "--listen", f"127.0.0.1:{port}",
                     "--admin", f"127.0.0.1:{admin}"], admin)
        flags += [f"--{name}", f"127.0.0.1:{port}"]
        if name == "telemetry":
            flags += ["--telemetry-admin", str(admin)]
    return flags


def _status(admin: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "envoy_mixer.cli", "proxy-status", "--json",
         "--xds", f"127.0.0.1:{admin}"], capture_output=True, text=True, check=True, timeout=30)
    return {p["proxy"]: p for p in json.loads(out.stdout) if p["connected"]}


def _synced(admin: int, proxy: str) -> bool:
    status = _status(admin).get(proxy)
    return status is not None and all(
        t["state"] in ("SYNCED", "NOT SENT") for t in status["types"].values()) and \
        status["types"]["LDS"]["state"] == "SYNCED"


def test_envoys_route_get_pushes_nack_and_survive_a_restart(
    tmp_path: Path, start_envoy: Start, start_mixer: Start, free_port: Callable[[], int],
) -> None:
    """ingress -> frontend -> backend through pilot-served Envoys (mTLS, policy, rate limit,
    telemetry; the frontend on delta xDS), a VirtualService edit, a NACK kept out of
    service, and a control-plane restart without dropped traffic."""
    mesh = demo_mesh(tmp_path / "mesh")
    flags = _services(start_mixer, free_port, mesh.path)
    telemetry_admin = int(flags.pop())
    flags.pop()
    xds, admin = free_port(), free_port()
    pilot_args = ["pilot", "--mesh", str(mesh.path), "--listen", f"127.0.0.1:{xds}",
                  "--admin", f"127.0.0.1:{admin}", "--ca-dir", str(tmp_path / "ca"), *flags]
    certs = {n: issue(tmp_path / "ca", tmp_path / "certs" / n, "default", n)
             for n in ("frontend", "backend")}
    certs["ingress"] = issue(tmp_path / "ca", tmp_path / "certs" / "ingress", "istio-system",
                             "istio-ingressgateway-service-account")
    pilot = start_mixer(pilot_args, admin)
    outbound = f"http://127.0.0.1:{mesh.ports[8092]}"
    apps = [app_process("backend", mesh.ports[8100], tmp_path / "backend.log").start(),
            app_process("frontend", mesh.ports[8090], tmp_path / "frontend.log",
                        "--call", outbound, "--call-host", "backend").start()]
    try:
        for app in apps:
            app.wait_ready(15)
        for name in ("backend", "frontend"):
            # The frontend speaks delta xDS, the others state of the world.
            envoy_admin = free_port()
            start_envoy(bootstrap(f"{name}-0", name, xds, envoy_admin, certs[name],
                                  delta=name == "frontend"),
                        envoy_admin, name=name)
        envoy_admin = free_port()
        start_envoy(bootstrap("istio-ingressgateway", "istio-ingressgateway", xds, envoy_admin,
                              certs["ingress"], namespace="istio-system", proxy_type="router"),
                    envoy_admin, name="ingress")
        ingress = f"http://127.0.0.1:{mesh.ports[8080]}"

        status, _, body = http(f"{ingress}/api/items")
        assert status == 200, body
        assert json.loads(body)["upstream"]["body"]["service"] == "backend"
        assert http(f"{outbound}/admin", host="backend")[0] == 403  # ext_authz DENY policy
        assert http(f"{ingress}/private")[0] == 403  # the gateway's ALLOW list
        limited = [http(f"{ingress}/api/limited")[0] for _ in range(4)]
        assert limited == [200, 200, 200, 429]  # ratelimit.yaml: 3 per minute per client
        eventually(lambda: "istio_requests_total{" in urllib_text(
            f"http://127.0.0.1:{telemetry_admin}/metrics"), what="telemetry saw the requests")

        secrets = get_json(f"http://127.0.0.1:{admin}/debug/proxy-config?proxy=frontend-0.default"
                           "&kind=secrets")
        assert isinstance(secrets, list) and secrets[0]["san"] == [
            "spiffe://cluster.local/ns/default/sa/frontend"]
        assert "PRIVATE" not in json.dumps(secrets)

        # A VirtualService edit changes what Envoy does.
        vs = mesh.path / "virtualservices.yaml"
        vs.write_text(vs.read_text().replace(
            "      timeout: 5s\n",
            "      timeout: 5s\n      headers:\n        response:\n"
            "          set: {x-pilot-edit: \"1\"}\n"))
        eventually(lambda: http(f"{outbound}/api/items", host="backend")[1].get(
            "x-pilot-edit") == "1", what="the VirtualService edit reached the frontend")

        # A cluster Envoy rejects: NACKED with Envoy's message, traffic keeps flowing.
        dr = mesh.path / "destinationrules.yaml"
        good_dr = dr.read_text()
        dr.write_text(good_dr.replace("http: {http1MaxPendingRequests: 100}",
                                      "http: {http1MaxPendingRequests: 100}\n"
                                      "      tcp: {connectTimeout: 0s}"))
        eventually(lambda: _status(admin)["frontend-0.default"]["types"]["CDS"]["state"]
                   == "NACKED", what="frontend NACKED the bad cluster")
        cds = _status(admin)["frontend-0.default"]["types"]["CDS"]
        assert "ConnectTimeout" in cds["nack_message"] or "connect_timeout" in cds["nack_message"]
        assert http(f"{ingress}/api/items")[0] == 200
        dr.write_text(good_dr)
        eventually(lambda: _synced(admin, "frontend-0.default"), what="fixed config SYNCED")

        # Restart: traffic flows while the control plane is down, and it re-serves all three.
        pilot.stop()
        assert http(f"{ingress}/api/items")[0] == 200
        start_mixer(pilot_args, admin)
        proxies = ("frontend-0.default", "backend-0.default", "istio-ingressgateway.istio-system")
        eventually(lambda: all(_synced(admin, p) for p in proxies), timeout=40,
                   what="every proxy re-served after the restart")
        assert http(f"{outbound}/api/items", host="backend")[1].get("x-pilot-edit") == "1"
    finally:
        for app in apps:
            app.stop()


def _secret_identities(dump: str) -> set[str]:
    """The SPIFFE ids of every certificate among the secrets of an Envoy config dump."""
    from cryptography import x509

    out: set[str] = set()
    for config in json.loads(dump)["configs"]:
        for entry in config.get("dynamic_active_secrets", []):
            chain = entry["secret"].get("tls_certificate", {}).get("certificate_chain", {})
            # Envoy shows inline_bytes (what the control plane sends) as base64.
            pem = (chain["inline_string"].encode() if "inline_string" in chain
                   else base64.b64decode(chain.get("inline_bytes", "")))
            if pem:
                cert = x509.load_pem_x509_certificate(pem)
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                out.update(sans.value.get_values_for_type(x509.UniformResourceIdentifier))
    return out


def urllib_text(url: str) -> str:
    """GET ``url`` as text."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_identity_impostor_plaintext_and_sds_rotation(
    tmp_path: Path, start_envoy: Start, start_mixer: Start, free_port: Callable[[], int],
) -> None:
    """An Envoy with the certificate of `third` whose node claims frontend-0 is refused (and
    counted) and gets no cluster and no secret; a plaintext ADS client is refused; the real
    backend gets its workload certificate over SDS and a new one before it expires."""
    mesh = demo_mesh(tmp_path / "mesh")
    xds, admin = free_port(), free_port()
    third = issue(tmp_path / "ca", tmp_path / "certs" / "third", "default", "third")
    backend = issue(tmp_path / "ca", tmp_path / "certs" / "backend", "default", "backend")
    start_mixer(["pilot", "--mesh", str(mesh.path), "--listen", f"127.0.0.1:{xds}",
                 "--admin", f"127.0.0.1:{admin}", "--ca-dir", str(tmp_path / "ca"),
                 "--cert-ttl", "6s"], admin)
    envoy_admin = free_port()
    config = tmp_path / "impostor.yaml"
    config.write_text(bootstrap("frontend-0", "frontend", xds, envoy_admin, third))
    impostor = procs.envoy_process(config, envoy_admin, tmp_path / "impostor.log").start()
    try:
        eventually(lambda: 'reason="identity_mismatch"' in urllib_text(
            f"http://127.0.0.1:{admin}/metrics"), what="the mismatch was counted")
        eventually(lambda: procs.http_ok(f"http://127.0.0.1:{envoy_admin}/server_info"))
        dump = urllib_text(f"http://127.0.0.1:{envoy_admin}/config_dump?include_eds")
        assert "outbound|" not in dump and "inbound|" not in dump
        # Its only secrets are its own bootstrap files (file SDS): never frontend's.
        assert _secret_identities(dump) <= {"spiffe://cluster.local/ns/default/sa/third"}
        assert "frontend-0.default" not in _status(admin)
    finally:
        impostor.stop()

    channel = grpc.insecure_channel(f"127.0.0.1:{xds}")
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    request = DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    request.node.id = "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"
    with pytest.raises(grpc.RpcError) as failure:
        next(iter(stub.StreamAggregatedResources(iter([request]), timeout=5)))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()

    # The real backend: its STRICT inbound listener goes live on the SDS secrets, and the
    # 6 s certificate is replaced at half-life without a restart.
    backend_admin = free_port()
    start_envoy(bootstrap("backend-0", "backend", xds, backend_admin, backend), backend_admin,
                name="backend")

    def serials() -> set[str]:
        certs = get_json(f"http://127.0.0.1:{backend_admin}/certs")
        assert isinstance(certs, dict)
        return {c["serial_number"] for entry in certs["certificates"]
                for c in entry.get("cert_chain", []) if c.get("subject_alt_names")
                and "sa/backend" in json.dumps(c["subject_alt_names"])}

    eventually(lambda: bool(serials()), what="the workload certificate arrived over SDS")
    first = serials()
    eventually(lambda: bool(serials() - first), timeout=15, what="a rotated certificate")
