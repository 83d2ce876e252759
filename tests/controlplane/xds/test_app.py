"""The control plane in-process: reload keeps the last good mesh, edits push only the proxies
they change, certificates rotate before expiry, and the run directory records the addresses."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from controlplane.ca.store import init_ca
from controlplane.xds.app import Pilot, PilotSettings, pilot_argv, read_pilot_file
from controlplane.xds.types import CLUSTER, LISTENER, ROUTE, SECRET

DEMO = Path(__file__).resolve().parents[1] / "mesh" / "testdata" / "demo"


def mesh_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEMO, tmp_path / "mesh"))


def test_bad_edit_keeps_the_last_good_mesh_and_is_counted(tmp_path: Path) -> None:
    """A broken file fails the reload: snapshots stay, the error is counted."""
    registry = CollectorRegistry()
    pilot = Pilot(PilotSettings(mesh=mesh_copy(tmp_path)), registry=registry)
    assert pilot.reloader.reload()
    before = {k: pilot.cache.get(k) for k in pilot.cache.proxies()}
    (tmp_path / "mesh" / "broken.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\n"
        "spec: {hosts: [a], http: [{route: [{destination: {host: a}}], bogus: 1}]}\n")
    assert not pilot.reloader.reload()
    assert {k: pilot.cache.get(k) for k in pilot.cache.proxies()} == before
    assert registry.get_sample_value(
        "mixer_config_load_errors_total", {"service": "pilot", "reason": "invalid_config"}) == 1
    assert pilot.reloader.last_error is not None
    assert pilot.reloader.last_error.file is not None
    assert pilot.reloader.last_error.file.endswith("broken.yaml")


def test_an_edit_pushes_only_the_proxies_it_changes(tmp_path: Path) -> None:
    """Editing the backend VirtualService changes the frontend's routes only."""
    mesh = mesh_copy(tmp_path)
    pilot = Pilot(PilotSettings(mesh=mesh))
    pilot.reloader.reload()
    before = pilot.cache.get("frontend-0.default")
    woken: list[str] = []
    for key in pilot.cache.proxies():
        pilot.cache.subscribe(key, woken.append)
    vs = mesh / "virtualservices.yaml"
    vs.write_text(vs.read_text().replace("timeout: 5s", "timeout: 7s"))
    pilot.reloader.reload()
    assert woken == ["frontend-0.default"]
    assert pilot.regenerate() == ()  # already pushed by the reload's swap: nothing new
    after = pilot.cache.get("frontend-0.default")
    assert before is not None and after is not None
    changed = [t for t in after.versions if after.versions[t] != before.versions[t]]
    assert changed == [ROUTE]


def test_certificates_rotate_at_half_life_and_only_sds_changes(tmp_path: Path) -> None:
    """Past half of its lifetime a workload certificate is reissued; only SDS changes."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    init_ca(tmp_path / "ca", "cluster.local", clock=lambda: now[0])
    pilot = Pilot(PilotSettings(mesh=mesh_copy(tmp_path), ca_dir=tmp_path / "ca",
                                cert_ttl=timedelta(hours=24)), clock=lambda: now[0])
    pilot.reloader.reload()
    first = pilot.certificates["frontend-0.default"].certificate.serial_number
    before = pilot.cache.get("frontend-0.default")
    now[0] += timedelta(hours=11)
    assert pilot.regenerate() == ()
    now[0] += timedelta(hours=2)
    assert "frontend-0.default" in pilot.regenerate()
    assert pilot.certificates["frontend-0.default"].certificate.serial_number != first
    after = pilot.cache.get("frontend-0.default")
    assert before is not None and after is not None
    assert [t for t in after.versions if after.versions[t] != before.versions[t]] == [SECRET]
    assert before.versions[CLUSTER] == after.versions[CLUSTER]
    assert before.versions[LISTENER] == after.versions[LISTENER]


async def test_start_binds_and_records_the_addresses_in_the_run_dir(tmp_path: Path) -> None:
    """Started on port 0, the control plane writes its xDS and admin addresses to pilot.json."""
    run_dir = tmp_path / "run"
    pilot = Pilot(PilotSettings(mesh=mesh_copy(tmp_path), listen="127.0.0.1:0",
                                admin="127.0.0.1:0", run_dir=run_dir))
    running = await pilot.start()
    try:
        recorded = read_pilot_file(run_dir)
        assert recorded["xds"] == running.xds and recorded["admin"] == running.admin
        assert not running.xds.endswith(":0")
    finally:
        await running.stop(0)


def test_pilot_argv_round_trips_through_the_cli(tmp_path: Path) -> None:
    """The subprocess arguments for a PilotSettings parse back into the same settings."""
    from controlplane.envoy.model import Endpoint, MixerServices
    from controlplane.xds.cli import settings_from_args
    from envoy_mixer.cli.main import build_parser

    settings = PilotSettings(
        mesh=tmp_path / "mesh", listen="127.0.0.1:1", admin="127.0.0.1:2",
        ca_dir=tmp_path / "ca", run_dir=tmp_path / "run", cert_ttl=timedelta(hours=2),
        services=MixerServices(authz=Endpoint("127.0.0.1", 3),
                               ratelimit=Endpoint("127.0.0.1", 4),
                               telemetry=Endpoint("127.0.0.1", 5)))
    args = build_parser(only="pilot").parse_args(pilot_argv(settings))
    assert settings_from_args(args) == settings
