"""controlplane.envoy.meshcerts: the demo mesh's CA and one certificate set per proxy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controlplane.ca.rotate import current_cert
from controlplane.envoy.meshcerts import ensure_ca, issue_mesh_certificates, rotators

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_every_proxy_gets_its_service_account_identity(tmp_path: Path) -> None:
    """The CA is created once; each proxy dir holds the SDS files for its own SPIFFE id."""
    dirs = issue_mesh_certificates(tmp_path / "ca", tmp_path / "certs", lambda: NOW)
    assert {role: d.name for role, d in dirs.items()} == {
        "ingress-gateway": "ingress", "egress-gateway": "egress",
        "sidecar-frontend": "frontend", "sidecar-backend": "backend"}
    for directory in dirs.values():
        assert (directory / "default.json").is_file() and (directory / "ROOTCA.json").is_file()
    ingress = current_cert(dirs["ingress-gateway"])
    assert ingress is not None and ingress.uris == (
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",)
    backend = current_cert(dirs["sidecar-backend"])
    assert backend is not None and backend.uris == ("spiffe://cluster.local/ns/default/sa/backend",)
    assert ensure_ca(tmp_path / "ca", lambda: NOW) == "existing"


def test_a_second_start_keeps_current_certificates_and_renews_old_ones(tmp_path: Path) -> None:
    """Within half the TTL nothing is reissued; past it the rotator swaps in a new set."""
    issue_mesh_certificates(tmp_path / "ca", tmp_path / "certs", lambda: NOW)
    first = current_cert(tmp_path / "certs" / "frontend")
    assert first is not None
    keep = rotators(tmp_path / "ca", tmp_path / "certs", lambda: NOW + timedelta(hours=1),
                    roles=("sidecar-frontend",))
    assert keep["sidecar-frontend"].tick().reason is None
    later = rotators(tmp_path / "ca", tmp_path / "certs", lambda: NOW + timedelta(hours=13),
                     roles=("sidecar-frontend",))
    assert later["sidecar-frontend"].tick().reason == "expiring"
    renewed = current_cert(tmp_path / "certs" / "frontend")
    assert renewed is not None and renewed.serial != first.serial
