"""Every Envoy config we ship passes ``envoy --mode validate``."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def test_envoy_validates(config: Path) -> None:
    """Envoy 1.40 accepts the config in validate mode."""
    result = procs.validate_envoy_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
