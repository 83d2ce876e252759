"""Fixtures for the telemetry tests: reporter identities, label lookups, metric parsing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.identity import NodeIdentity, encode_peer_header, node_identity

FRONTEND_META = {
    "NAME": "frontend-7d4-abc", "NAMESPACE": "shop", "WORKLOAD_NAME": "frontend",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "frontend", "version": "v1",
               "service.istio.io/canonical-name": "frontend",
               "service.istio.io/canonical-revision": "v1"},
}
BACKEND_META = {
    "NAME": "backend-5f6-xyz", "NAMESPACE": "shop", "WORKLOAD_NAME": "backend",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "backend", "version": "v2"},
}
FRONTEND_ID = "sidecar~10.0.0.1~frontend-7d4-abc.shop~shop.svc.cluster.local"
BACKEND_ID = "sidecar~10.0.0.2~backend-5f6-xyz.shop~shop.svc.cluster.local"


@pytest.fixture
def frontend() -> NodeIdentity:
    """The client-side sidecar's identity."""
    return node_identity(FRONTEND_ID, FRONTEND_META)


@pytest.fixture
def backend() -> NodeIdentity:
    """The server-side sidecar's identity."""
    return node_identity(BACKEND_ID, BACKEND_META)


@pytest.fixture
def frontend_header() -> str:
    """The peer-metadata header value the frontend's sidecar sends."""
    return encode_peer_header(FRONTEND_META)


@pytest.fixture
def backend_header() -> str:
    """The peer-metadata header value the backend's sidecar answers with."""
    return encode_peer_header(BACKEND_META)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def parse_metrics() -> Callable[[str], Samples]:
    """Parse Prometheus text into {(sample name, sorted labels): value}."""

    def parse(text: str) -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    return parse
