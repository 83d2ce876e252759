"""``mixer proxy-status``, ``proxy-config`` and ``envoy-config-xds`` against an in-process pilot."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.ca.authority import create_root
from controlplane.ca.identity import SpiffeId
from controlplane.pilot.secrets import workload_secrets
from controlplane.xds.app import Pilot, PilotSettings
from controlplane.xds.cache import Snapshot, SnapshotCache
from controlplane.xds.debug import proxy_config
from controlplane.xds.types import CLUSTER, SECRET
from envoy_mixer.cli.main import main

DEMO = Path(__file__).resolve().parents[1] / "mesh" / "testdata" / "demo"


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    # The CLI blocks on HTTP; run it off the loop that serves the admin port.
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


async def test_proxy_status_and_config_through_the_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A connected proxy shows in proxy-status (found via the run dir); proxy-config lists
    its clusters; an unknown proxy is exit 1."""
    mesh = Path(shutil.copytree(DEMO, tmp_path / "mesh"))
    pilot = Pilot(PilotSettings(mesh=mesh, listen="127.0.0.1:0", admin="127.0.0.1:0",
                                run_dir=tmp_path / "run"))
    running = await pilot.start()
    channel = grpc.aio.insecure_channel(running.xds)
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    try:
        request = DiscoveryRequest(type_url=CLUSTER)
        request.node.id = "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"
        await call.write(request)
        response = await call.read()
        await call.write(DiscoveryRequest(type_url=CLUSTER, version_info=response.version_info,
                                          response_nonce=response.nonce))
        run = str(tmp_path / "run")
        for _ in range(50):
            code, out = await _run(capsys, "proxy-status", "--run-dir", run, "--json")
            if json.loads(out)[0]["types"]["CDS"]["state"] == "SYNCED":
                break
            await asyncio.sleep(0.02)
        assert code == 0
        code, out = await _run(capsys, "proxy-status", "--run-dir", run)
        assert code == 0 and out.splitlines()[0].split()[:6] == [
            "NAME", "CDS", "EDS", "LDS", "RDS", "SDS"]
        assert out.splitlines()[1].startswith("frontend-0.default") and "SYNCED" in out
        code, out = await _run(capsys, "proxy-config", "clusters", "frontend-0.default",
                               "--run-dir", run)
        assert "outbound|8080|v1|backend.default.svc.cluster.local" in out.splitlines()
        code, _ = await _run(capsys, "proxy-config", "routes", "nobody.default",
                             "--run-dir", run)
        assert code == 1
    finally:
        call.cancel()
        await channel.close()
        await running.stop(0)


def test_secrets_view_shows_serial_san_expiry_never_keys() -> None:
    """proxy-config secrets: `default` and `ROOTCA` with serial, SAN and expiry, no key."""
    now = datetime.now(UTC)
    ca = create_root("cluster.local", now=now)
    issued = ca.issue(SpiffeId("cluster.local", "default", "frontend"), now=now)
    cache = SnapshotCache()
    cache.set_snapshot("frontend-0.default", Snapshot.build({SECRET: workload_secrets(issued)}))
    view = proxy_config(cache, "frontend-0.default", "secrets", {"frontend-0.default": issued})
    assert view is not None and [s["name"] for s in view] == ["default", "ROOTCA"]
    assert view[0]["san"] == ["spiffe://cluster.local/ns/default/sa/frontend"]
    assert view[0]["serial"] == f"{issued.certificate.serial_number:x}"
    assert "PRIVATE" not in json.dumps(view) and "not_after" in view[0]


def test_proxy_status_without_a_control_plane_fails(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """No pilot.json in the run dir: exit 1 with a message."""
    assert main(["proxy-status", "--run-dir", str(tmp_path)]) == 1
    assert "no control plane" in capsys.readouterr().err


def test_envoy_config_xds_renders_the_minimal_bootstrap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Node id and metadata from the mesh, INTERCEPTION_MODE NONE, ADS over xds-grpc with the
    bootstrap certificate over file SDS (rotatable), LDS/CDS from ADS, the admin address."""
    certs = tmp_path / "certs"
    assert main(["ca", "init", "--dir", str(tmp_path / "ca")]) == 0
    assert main(["ca", "issue", "--dir", str(tmp_path / "ca"), "--namespace", "default",
                 "--service-account", "frontend", "--out", str(certs)]) == 0
    capsys.readouterr()
    assert main(["envoy-config-xds", "--xds", "127.0.0.1:15010", "--workload",
                 "frontend-0.default", "--mesh", str(DEMO), "--cert-dir", str(certs),
                 "--admin", "127.0.0.1:15000"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    node = config["node"]
    assert node["id"] == "sidecar~127.0.0.1~frontend-0.default~default.svc.cluster.local"
    assert node["metadata"]["INTERCEPTION_MODE"] == "NONE"
    assert node["metadata"]["LABELS"]["app"] == "frontend"
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "GRPC" and ads["set_node_on_first_message_only"] is True
    assert config["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    [xds] = config["static_resources"]["clusters"]
    assert xds["name"] == "xds-grpc"
    tls = xds["transport_socket"]["typed_config"]["common_tls_context"]
    [cert] = tls["tls_certificate_sds_secret_configs"]
    assert cert["name"] == "default"
    assert cert["sds_config"]["path_config_source"] == {
        "path": f"{certs}/default.json", "watched_directory": {"path": str(certs)}}
    validation = tls["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"][0][
        "matcher"] == {"exact": "spiffe://cluster.local/ns/istio-system/sa/istiod"}
    assert config["admin"]["address"]["socket_address"]["port_value"] == 15000


@pytest.mark.slow
def test_the_bootstrap_passes_envoy_validate(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``envoy --mode validate`` accepts the rendered bootstrap (with TLS files)."""
    from envoy_mixer.dev import procs

    certs = tmp_path / "certs"
    main(["ca", "init", "--dir", str(tmp_path / "ca")])
    main(["ca", "issue", "--dir", str(tmp_path / "ca"), "--namespace", "default",
          "--service-account", "frontend", "--out", str(certs)])
    out = tmp_path / "bootstrap.yaml"
    assert main(["envoy-config-xds", "--xds", "127.0.0.1:15010", "--workload",
                 "frontend-0.default", "--cert-dir", str(certs), "-o", str(out)]) == 0
    result = procs.validate_envoy_config(out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_config_xds_flag_is_the_minimal_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    """`mixer envoy-config --xds H:P --workload N.NS` (the issue's spelling) renders the same
    minimal bootstrap as `mixer envoy-config-xds`; NAME plus --namespace works too."""
    assert main(["envoy-config", "--xds", "127.0.0.1:15010", "--workload", "frontend.default"]) == 0
    flag = capsys.readouterr().out
    assert main(["envoy-config", "--xds", "127.0.0.1:15010", "--workload", "frontend",
                 "--namespace", "default"]) == 0
    assert capsys.readouterr().out == flag
    assert main(["envoy-config-xds", "--xds", "127.0.0.1:15010",
                 "--workload", "frontend.default"]) == 0
    assert capsys.readouterr().out == flag
    bootstrap = yaml.safe_load(flag)
    assert bootstrap["node"]["id"].startswith("sidecar~")
    assert bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert main(["envoy-config", "--xds", "127.0.0.1:15010"]) == 2
