"""A bad edit keeps the last good Mesh serving through the shared Reloader, and is counted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controlplane.mesh import Mesh, load_mesh
from envoy_mixer.common.snapshot import Snapshot
from envoy_mixer.runtime.reload import Reloader

DEMO = Path(__file__).parent / "testdata" / "demo"


def test_bad_edit_keeps_the_last_good_mesh(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """After a bad edit the old Mesh stays, the error names file/line/field, and it counts."""
    mesh_dir = tmp_path / "mesh"
    shutil.copytree(DEMO, mesh_dir)
    registry = CollectorRegistry()
    snapshot: Snapshot[Mesh] = Snapshot()
    reloader = Reloader(service="mesh", paths=[mesh_dir], load=lambda: load_mesh(mesh_dir),
                        snapshot=snapshot, registry=registry)
    assert reloader.reload()
    good = snapshot.get()

    vs = mesh_dir / "virtualservices.yaml"
    vs.write_text(vs.read_text().replace("timeout: 5s", "timeout: soon"))
    assert not reloader.reload()
    assert snapshot.get() is good
    assert reloader.last_error is not None
    assert (reloader.last_error.file, reloader.last_error.field) == (
        "virtualservices.yaml", "spec.http[0].timeout")
    assert reloader.last_error.line == 26
    assert registry.get_sample_value("mixer_config_load_errors_total",
                                     {"service": "mesh", "reason": "invalid_config"}) == 1
    [record] = [r for r in caplog.records if r.getMessage() == "config_load_error"]
    fields = record.mixer_fields  # type: ignore[attr-defined]
    assert (fields["file"], fields["line"], fields["field"], fields["kept_previous"]) == (
        "virtualservices.yaml", 26, "spec.http[0].timeout", True)

    vs.write_text(vs.read_text().replace("timeout: soon", "timeout: 3s"))
    assert reloader.reload()
    fixed = snapshot.get()
    assert fixed is not good
    backend = next(v for v in fixed.virtual_services if v.origin.name == "backend")
    assert backend.http[0].timeout == 3.0
