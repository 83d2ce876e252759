"""Reissuing a workload certificate before it expires, without restarting Envoy.

Two parts:

- :func:`decide`: pure. Given what is on disk (:class:`CurrentCert`), the wanted identity and
  root, and ``now``, say whether to reissue and why, and when to look again. The threshold
  follows Istio's ``SECRET_GRACE_PERIOD_RATIO`` (0.5): rotate once half of the lifetime is left.
- :class:`Rotator`: the loop. Each :meth:`Rotator.tick` reads the current set, asks
  :func:`decide`, and if due issues a new set and swaps it in atomically
  (:func:`controlplane.ca.files.write_bundle`); Envoy's file SDS picks it up. The clock and the
  sleep are injected, so tests drive it without waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controlplane.ca.authority import DEFAULT_WORKLOAD_TTL, CertificateAuthority
from controlplane.ca.errors import CAError
from controlplane.ca.files import ROOT_CERT, read_leaf, write_bundle
from controlplane.ca.identity import SpiffeId
from envoy_mixer.common.logs import log_event

__all__ = [
    "DEFAULT_GRACE_RATIO",
    "CurrentCert",
    "Decision",
    "Rotator",
    "current_cert",
    "decide",
]

_log = logging.getLogger("controlplane.ca.rotate")

#: Istio's default SECRET_GRACE_PERIOD_RATIO: rotate when half of the lifetime remains.
DEFAULT_GRACE_RATIO = 0.5

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class CurrentCert:
    """The facts about an issued set that rotation needs (no key material)."""

    not_before: datetime
    not_after: datetime
    uris: tuple[str, ...]
    root_fingerprint: bytes | None
    serial: int


@dataclass(frozen=True, slots=True)
class Decision:
    """``reason`` is None when nothing is to be done; ``next_check`` is when to look again.

    ``reason`` is ``"failed"`` with the message in ``error`` when a reissue could not be done.
    """

    reason: str | None
    next_check: datetime
    error: str | None = None


def rotation_time(not_before: datetime, not_after: datetime,
                  grace_ratio: float = DEFAULT_GRACE_RATIO) -> datetime:
    """The instant from which a certificate is due: ``grace_ratio`` of its lifetime left."""
    return not_after - (not_after - not_before) * grace_ratio


def decide(
    current: CurrentCert | None, *, identity: SpiffeId, root_fingerprint: bytes,
    now: datetime, grace_ratio: float = DEFAULT_GRACE_RATIO,
) -> Decision:
    """Whether the set on disk must be reissued now, and when to check next."""
    if not 0.0 < grace_ratio < 1.0:
        raise ValueError("grace_ratio must be between 0 and 1")
    if current is None:
        return Decision("missing", now)
    if current.uris != (identity.uri,):
        return Decision("identity_changed", now)
    if current.root_fingerprint != root_fingerprint:
        return Decision("root_changed", now)
    due = rotation_time(current.not_before, current.not_after, grace_ratio)
    if now >= due:
        return Decision("expired" if now >= current.not_after else "expiring", now)
    return Decision(None, due)


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def current_cert(out: Path) -> CurrentCert | None:
    """Read the facts of the set in ``out``; None if absent or unreadable (then reissue)."""
    try:
        leaf = read_leaf(out)
        roots = x509.load_pem_x509_certificates((out / ROOT_CERT).read_bytes())
    except (OSError, ValueError):
        return None
    if leaf is None:
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CurrentCert(
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc, uris=uris,
        root_fingerprint=_fingerprint(roots[0]) if roots else None, serial=leaf.serial_number,
    )


class Rotator:
    """Keeps one workload's set in ``out`` fresh. ``load_ca`` is called on every issue, so a
    re-plugged CA directory is picked up without a restart."""

    def __init__(
        self, *, load_ca: Callable[[], CertificateAuthority], identity: SpiffeId, out: Path,
        clock: Clock, ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        grace_ratio: float = DEFAULT_GRACE_RATIO, retry: timedelta = timedelta(seconds=30),
    ) -> None:
        self._load_ca = load_ca
        self._identity = identity
        self._out = out
        self._clock = clock
        self._ttl = ttl
        self._grace = grace_ratio
        self._retry = retry

    def tick(self) -> Decision:
        """Check once and reissue if due; a failure keeps the old set and retries later."""
        now = self._clock()
        try:
            ca = self._load_ca()
            decision = decide(current_cert(self._out), identity=self._identity,
                              root_fingerprint=_fingerprint(ca.root), now=now,
                              grace_ratio=self._grace)
            if decision.reason is None:
                return decision
            issued = ca.issue(self._identity, now=now, ttl=self._ttl)
            write_bundle(self._out, issued)
        except (CAError, OSError) as exc:
            log_event(_log, "ca_rotation_failed", logging.ERROR, identity=self._identity.uri,
                      error=str(exc))
            return Decision("failed", now + self._retry, error=str(exc))
        cert = issued.certificate
        log_event(_log, "ca_certificate_rotated", identity=self._identity.uri,
                  reason=decision.reason, serial=f"{cert.serial_number:x}",
                  not_after=cert.not_valid_after_utc.isoformat())
        return Decision(decision.reason, rotation_time(cert.not_valid_before_utc,
                                                       cert.not_valid_after_utc, self._grace))

    def run(self, stop: threading.Event, *, max_sleep: float = 60.0) -> None:
        """Tick until ``stop`` is set, sleeping until the next check (at most ``max_sleep``
        at a time, so a suspended machine or a changed clock is noticed soon)."""
        while not stop.is_set():
            decision = self.tick()
            wait = (decision.next_check - self._clock()).total_seconds()
            stop.wait(min(max(wait, 0.0), max_sleep))
