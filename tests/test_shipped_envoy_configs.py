"""Every Envoy config we ship passes ``envoy --mode validate``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from controlplane.envoy.meshcerts import issue_mesh_certificates
from controlplane.envoy.shipped import CERT_ROOT
from envoy_mixer.dev import procs

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(
    p for pattern in ("envoy-configs/**/*.yaml", "compose/envoy/*.yaml")
    for p in REPO.glob(pattern)
)


def test_some_configs_are_shipped() -> None:
    """The repository ships Envoy configs (guards against an empty parametrization)."""
    assert SHIPPED, "no Envoy configs found under envoy-configs/"


@pytest.mark.slow
@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_envoy_validates(config: Path, tmp_path: Path) -> None:
    """Envoy 1.40 accepts the config in validate mode (given the certificates it reads)."""
    text = config.read_text()
    if CERT_ROOT in text:
        # File SDS paths must exist even in validate mode: issue the mesh's certificates.
        issue_mesh_certificates(tmp_path / "ca", tmp_path / "certs", lambda: datetime.now(UTC))
        config = tmp_path / config.name
        config.write_text(text.replace(CERT_ROOT, str(tmp_path / "certs")))
    result = procs.validate_envoy_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
