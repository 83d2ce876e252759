"""Mesh security policy: Istio's ``PeerAuthentication`` and the mTLS mode it gives a workload.

- :mod:`~controlplane.security.peerauthn`: YAML -> validated, immutable ``PeerAuthentication``
  values (errors name file, line and field);
- :mod:`~controlplane.security.mtls`: pure resolution of the effective mode for a workload and
  port, with Istio's precedence (workload over namespace over the root namespace).
"""

from __future__ import annotations

from controlplane.security.mtls import EffectiveMtls, effective_mtls
from controlplane.security.peerauthn import (
    MtlsMode,
    PeerAuthentication,
    compile_documents,
    load_peer_authentications,
    load_text,
)

__all__ = [
    "EffectiveMtls",
    "MtlsMode",
    "PeerAuthentication",
    "compile_documents",
    "effective_mtls",
    "load_peer_authentications",
    "load_text",
]
