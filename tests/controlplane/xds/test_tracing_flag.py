"""``mixer pilot --tracing HOST:PORT``: parsed into the settings and given to generation."""

from __future__ import annotations

from pathlib import Path

from controlplane.envoy.model import TRACING_CLUSTER, Endpoint
from controlplane.xds.app import Pilot, PilotSettings, pilot_argv
from controlplane.xds.cli import settings_from_args
from controlplane.xds.types import CLUSTER
from envoy_mixer.cli.main import build_parser

DEMO = Path(__file__).resolve().parents[1] / "mesh" / "testdata" / "demo"


def test_tracing_flag_round_trips_and_is_off_by_default(tmp_path: Path) -> None:
    """`--tracing` parses into PilotSettings.tracing, pilot_argv writes it back, and it is
    None without the flag."""
    parser = build_parser(only="pilot")
    settings = PilotSettings(mesh=tmp_path, tracing=Endpoint("jaeger", 4317))
    assert "--tracing" in pilot_argv(settings)
    assert settings_from_args(parser.parse_args(pilot_argv(settings))) == settings
    plain = settings_from_args(parser.parse_args(["pilot", "--mesh", str(tmp_path)]))
    assert plain.tracing is None and "--tracing" not in pilot_argv(plain)


def test_pilot_snapshots_carry_the_tracing_cluster() -> None:
    """A pilot run with tracing puts the collector's cluster into every proxy's snapshot."""
    pilot = Pilot(PilotSettings(mesh=DEMO, tracing=Endpoint("127.0.0.1", 4317)))
    pilot.reloader.reload()
    assert pilot.cache.proxies()
    for key in pilot.cache.proxies():
        snapshot = pilot.cache.get(key)
        assert snapshot is not None
        assert TRACING_CLUSTER in snapshot.resources[CLUSTER], key
