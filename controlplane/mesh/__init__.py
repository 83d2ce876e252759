"""The mesh model: a directory of Istio's files (Galley's job), validated and resolved.

- :func:`load_mesh` reads ServiceEntry, WorkloadEntry, Sidecar, Gateway, VirtualService,
  DestinationRule, the security kinds and our ratelimit / telemetry files into one immutable
  :class:`Mesh`, or raises ``ConfigError`` naming file, line and field.
- :mod:`controlplane.mesh.analyze` reports what Istio's analyzers would across the files.
- ``mixer analyze DIR`` (:mod:`controlplane.mesh.cli`) runs both.

Pure code: no grpc, no Envoy; the per-proxy builders read the model, never the YAML.
"""

from controlplane.mesh.loader import load_mesh
from controlplane.mesh.model import Mesh

__all__ = ["Mesh", "load_mesh"]
