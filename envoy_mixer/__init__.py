"""envoy-mixer: Istio's policy, quota and telemetry for any Envoy, without Kubernetes.

The package is layered (docs/architecture.md; tests/test_import_rules.py pins it):

- :mod:`envoy_mixer.common`: the leaf every part imports (errors, YAML with lines, logging,
  snapshots, clocks, the wire contract); it imports nothing of ours.
- :mod:`envoy_mixer.runtime`: what the three services' thin servers share (gRPC and admin
  lifecycle, health, settings, reload, the one ``serve`` function).
- :mod:`envoy_mixer.cli`: the ``mixer`` command, thin wiring over everything else.
- :mod:`envoy_mixer.dev`: local orchestration (``mixer up``, process management, demo apps),
  apart from what a service image needs.

``python -m envoy_mixer`` is the ``mixer`` command; ``__version__`` is what ``mixer --version``
prints (a test keeps it equal to pyproject's version). Importing this package is free: nothing
below is imported until used, so ``mixer --help`` stays fast.
"""

__version__ = "0.1.0"
