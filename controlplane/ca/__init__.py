"""The mesh CA (Istio's Citadel): a root, SPIFFE workload certificates, file-based SDS.

- :mod:`~controlplane.ca.authority`: pure signing (root creation, workload certs, CSRs);
- :mod:`~controlplane.ca.store`: the CA directory in Istio's plug-in layout;
- :mod:`~controlplane.ca.files`: workload files, swapped atomically for Envoy's file SDS;
- :mod:`~controlplane.ca.sds`: the SDS ``DiscoveryResponse`` documents and source configs;
- :mod:`~controlplane.ca.rotate`: when to reissue, and the loop that does it;
- :mod:`~controlplane.ca.cli`: ``mixer ca init|issue|rotate``.
"""

from __future__ import annotations

from controlplane.ca.authority import (
    DEFAULT_WORKLOAD_TTL,
    CertificateAuthority,
    IssuedCertificate,
    create_root,
)
from controlplane.ca.durations import parse_duration
from controlplane.ca.errors import (
    CAError,
    CANotInitialized,
    InvalidCA,
    InvalidDuration,
    InvalidIdentity,
)
from controlplane.ca.files import write_bundle
from controlplane.ca.identity import SpiffeId
from controlplane.ca.rotate import Rotator, decide
from controlplane.ca.store import init_ca, load_ca

__all__ = [
    "DEFAULT_WORKLOAD_TTL",
    "CAError",
    "CANotInitialized",
    "CertificateAuthority",
    "InvalidCA",
    "InvalidDuration",
    "InvalidIdentity",
    "IssuedCertificate",
    "Rotator",
    "SpiffeId",
    "create_root",
    "decide",
    "init_ca",
    "load_ca",
    "parse_duration",
    "write_bundle",
]
