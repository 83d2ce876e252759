"""Rotation: when a certificate is due (pure, on an injected clock) and the rotator loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.ca import Rotator, SpiffeId, create_root, decide, write_bundle
from controlplane.ca.errors import CANotInitialized
from controlplane.ca.files import read_leaf
from controlplane.ca.rotate import CurrentCert, current_cert, rotation_time

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ID = SpiffeId("cluster.local", "default", "web")
ROOT_FP = b"root"


def _current(*, lifetime: timedelta = timedelta(hours=24), uri: str = ID.uri,
             root: bytes = ROOT_FP) -> CurrentCert:
    return CurrentCert(not_before=NOW, not_after=NOW + lifetime, uris=(uri,),
                       root_fingerprint=root, serial=1)


def test_not_due_before_half_the_lifetime() -> None:
    """At 11h59m of a 24h cert nothing happens, and the next check is at 12h."""
    d = decide(_current(), identity=ID, root_fingerprint=ROOT_FP,
               now=NOW + timedelta(hours=11, minutes=59))
    assert d.reason is None
    assert d.next_check == NOW + timedelta(hours=12)


def test_due_at_half_the_lifetime() -> None:
    """At 12h of a 24h cert (Istio's 0.5 grace ratio) it is due."""
    d = decide(_current(), identity=ID, root_fingerprint=ROOT_FP, now=NOW + timedelta(hours=12))
    assert d.reason == "expiring"


def test_grace_ratio_moves_the_threshold() -> None:
    """With grace 0.2 a 24h cert is due from 19h12m, not before."""
    assert rotation_time(NOW, NOW + timedelta(hours=24), 0.2) == NOW + timedelta(hours=19,
                                                                                  minutes=12)
    d = decide(_current(), identity=ID, root_fingerprint=ROOT_FP, now=NOW + timedelta(hours=19),
               grace_ratio=0.2)
    assert d.reason is None


@pytest.mark.parametrize(("current", "now", "reason"), [
    (None, NOW, "missing"),
    (_current(), NOW + timedelta(hours=25), "expired"),
    (_current(uri="spiffe://cluster.local/ns/default/sa/other"), NOW, "identity_changed"),
    (_current(root=b"old-root"), NOW, "root_changed"),
])
def test_reissue_reasons(current: CurrentCert | None, now: datetime, reason: str) -> None:
    """Missing, expired, wrong identity and a changed root all reissue at once."""
    d = decide(current, identity=ID, root_fingerprint=ROOT_FP, now=now)
    assert (d.reason, d.next_check) == (reason, now)


class FakeClock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_rotator_issues_then_waits_then_reissues(tmp_path: Path) -> None:
    """First tick writes a cert; a tick before half-life keeps it; one after replaces it."""
    ca = create_root("cluster.local", now=NOW)
    clock = FakeClock(NOW)
    rotator = Rotator(load_ca=lambda: ca, identity=ID, out=tmp_path, clock=clock,
                      ttl=timedelta(hours=2))
    first = rotator.tick()
    assert first.reason == "missing" and first.next_check == NOW + timedelta(hours=1)
    serial = read_leaf(tmp_path).serial_number  # type: ignore[union-attr]
    clock.now = NOW + timedelta(minutes=59)
    assert rotator.tick().reason is None
    assert read_leaf(tmp_path).serial_number == serial  # type: ignore[union-attr]
    clock.now = NOW + timedelta(hours=1)
    assert rotator.tick().reason == "expiring"
    leaf = read_leaf(tmp_path)
    assert leaf is not None and leaf.serial_number != serial
    assert leaf.not_valid_before_utc == NOW + timedelta(hours=1)


def test_rotator_failure_keeps_the_old_set_and_retries(tmp_path: Path) -> None:
    """If the CA cannot be loaded the files stay as they were and a retry is scheduled."""
    ca = create_root("cluster.local", now=NOW)
    write_bundle(tmp_path, ca.issue(ID, now=NOW))
    before = current_cert(tmp_path)

    def broken() -> object:
        raise CANotInitialized("gone")

    clock = FakeClock(NOW + timedelta(hours=20))
    rotator = Rotator(load_ca=broken, identity=ID, out=tmp_path, clock=clock,  # type: ignore[arg-type]
                      retry=timedelta(seconds=30))
    d = rotator.tick()
    assert (d.reason, d.next_check) == ("failed", clock.now + timedelta(seconds=30))
    assert current_cert(tmp_path) == before


def test_rotator_run_stops_when_told(tmp_path: Path) -> None:
    """run() ticks, then returns promptly once the stop event is set."""
    ca = create_root("cluster.local", now=NOW)
    stop = threading.Event()
    rotator = Rotator(load_ca=lambda: ca, identity=ID, out=tmp_path, clock=FakeClock(NOW))
    thread = threading.Thread(target=rotator.run, args=(stop,))
    thread.start()
    try:
        for _ in range(200):
            if read_leaf(tmp_path) is not None:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert read_leaf(tmp_path) is not None
