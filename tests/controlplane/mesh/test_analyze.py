"""Analyzers: what istioctl analyze finds across a mesh's files, with Istio's codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.mesh import load_mesh
from controlplane.mesh.analyze import ANALYZERS, Finding, analyze, has_errors
from controlplane.mesh.model import Origin

TESTDATA = Path(__file__).parent / "testdata"
CASES = sorted((TESTDATA / "analyze").glob("*.yaml"))


def test_demo_mesh_analyzes_clean() -> None:
    """The demo mesh (mixer up's topology) has no findings at all."""
    assert analyze(load_mesh(TESTDATA / "demo")) == []


def test_shipped_mesh_analyzes_clean() -> None:
    """examples/mesh, what `mixer up` serves and users copy, has no findings either."""
    assert analyze(load_mesh(Path(__file__).resolve().parents[3] / "examples" / "mesh")) == []


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_analyzer_case(case: Path) -> None:
    """Each case file yields exactly the findings in its `# expect:` lines, in order."""
    expected = [line.removeprefix("# expect: ") for line in case.read_text().splitlines()
                if line.startswith("# expect: ")]
    assert expected, "a case names at least one finding"
    assert [str(f) for f in analyze(load_mesh(case))] == expected


def test_every_analyzer_has_a_case() -> None:
    """Each analyzer fires in at least one case file (none is dead code)."""
    fired: set[str] = set()
    for case in CASES:
        mesh = load_mesh(case)
        fired |= {a.__name__ for a in ANALYZERS if list(a(mesh))}
    assert fired == {a.__name__ for a in ANALYZERS}


def test_has_errors_only_counts_errors() -> None:
    """Warnings alone are not errors; one Error is."""
    origin = Origin("Sidecar", "default", "a", "a.yaml", 1)
    warning = Finding("Warning", "IST0127", "NoMatchingWorkloadsFound", "m", origin)
    error = Finding("Error", "IST0101", "ReferencedResourceNotFound", "m", origin, 3)
    assert not has_errors([warning])
    assert has_errors([warning, error])
    assert error.to_dict() == {
        "level": "Error", "code": "IST0101", "name": "ReferencedResourceNotFound",
        "message": "m", "kind": "Sidecar", "namespace": "default", "resource": "a",
        "file": "a.yaml", "line": 3}


def test_gateway_virtual_services_for_one_host_merge(tmp_path: Path) -> None:
    """Two VirtualServices for one host on a Gateway are merged, not a conflict (Istio)."""
    demo = (TESTDATA / "demo" / "virtualservices.yaml").read_text()
    for name in ("services", "workloads", "gateways", "destinationrules"):
        (tmp_path / f"{name}.yaml").write_text((TESTDATA / "demo" / f"{name}.yaml").read_text())
    (tmp_path / "virtualservices.yaml").write_text(
        demo + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: frontend-api, namespace: default}\n"
        "spec:\n  hosts: ['*']\n  gateways: [istio-system/ingressgateway]\n"
        "  http: [{match: [{uri: {prefix: /api}}], route: [{destination: {host: frontend}}]}]\n")
    assert [f.code for f in analyze(load_mesh(tmp_path))] == []
