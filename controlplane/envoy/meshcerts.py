"""Certificates for the demo mesh's proxies: a CA, one workload set per proxy, kept fresh.

``mixer up`` creates the CA in its run directory on first start and calls :func:`rotators`
(whose first tick issues every missing set) before any Envoy starts: file SDS refuses a path
that does not exist. The same rotators then reissue each set before it expires, swapped in
atomically (:mod:`controlplane.ca.files`), so Envoy picks it up without a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from controlplane.ca import DEFAULT_WORKLOAD_TTL, Rotator, SpiffeId, init_ca, load_ca
from controlplane.envoy.mesh import CERT_DIRS, WORKLOADS
from controlplane.envoy.model import DEFAULT_TRUST_DOMAIN

Clock = Callable[[], datetime]


def ensure_ca(ca_dir: Path, clock: Clock, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """Create the mesh root in ``ca_dir`` unless one is there; returns what ``init`` did."""
    return init_ca(ca_dir, trust_domain, clock=clock).outcome


def rotators(
    ca_dir: Path, cert_root: Path, clock: Clock, *, ttl: timedelta = DEFAULT_WORKLOAD_TTL,
    trust_domain: str = DEFAULT_TRUST_DOMAIN, roles: tuple[str, ...] = tuple(CERT_DIRS),
) -> dict[str, Rotator]:
    """One rotator per proxy role, writing ``<cert_root>/<CERT_DIRS[role]>/``."""
    out = {}
    for role in roles:
        workload = WORKLOADS[role]
        identity = SpiffeId(trust_domain, workload.namespace, workload.account)
        out[role] = Rotator(load_ca=lambda: load_ca(ca_dir), identity=identity,
                            out=cert_root / CERT_DIRS[role], clock=clock, ttl=ttl)
    return out


def issue_mesh_certificates(ca_dir: Path, cert_root: Path, clock: Clock) -> dict[str, Path]:
    """Create the CA if needed and make sure every proxy has a current set; role -> dir."""
    ensure_ca(ca_dir, clock)
    out = {}
    for role, rotator in rotators(ca_dir, cert_root, clock).items():
        decision = rotator.tick()
        if decision.error is not None:
            raise RuntimeError(f"cannot issue the {role} certificate: {decision.error}")
        out[role] = cert_root / CERT_DIRS[role]
    return out
