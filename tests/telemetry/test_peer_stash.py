"""Peer headers that a proxy stripped from the client's response still reach the labels."""

from __future__ import annotations

import base64
import json

from envoy.data.accesslog.v3 import accesslog_pb2

from controlplane.envoy.model import (
    PEER_METADATA_HEADER,
    PEER_METADATA_ID_HEADER,
    PEER_STASH_NAMESPACE,
)
from telemetry import identity
from telemetry.server import http_entry


def test_generator_and_telemetry_agree_on_names() -> None:
    """The Envoy generator and the telemetry service use the same header and metadata names."""
    assert identity.PEER_METADATA_HEADER == PEER_METADATA_HEADER
    assert identity.PEER_METADATA_ID_HEADER == PEER_METADATA_ID_HEADER
    assert identity.PEER_STASH_NAMESPACE == PEER_STASH_NAMESPACE


def test_stashed_peer_headers_count_as_response_headers() -> None:
    """Headers moved into dynamic metadata by header_to_metadata are read back for the peer."""
    peer = base64.b64encode(json.dumps({"WORKLOAD_NAME": "frontend"}).encode()).decode()
    entry = accesslog_pb2.HTTPAccessLogEntry()
    stash = entry.common_properties.metadata.filter_metadata[PEER_STASH_NAMESPACE]
    stash.update({PEER_METADATA_HEADER: peer, PEER_METADATA_ID_HEADER: "sidecar~1.2.3.4~f"})
    entry.response.response_headers["grpc-status"] = "0"
    headers = http_entry(entry).response_headers
    assert headers == {"grpc-status": "0", PEER_METADATA_HEADER: peer,
                       PEER_METADATA_ID_HEADER: "sidecar~1.2.3.4~f"}


def test_logged_header_wins_over_the_stash() -> None:
    """A header the proxy did log is kept as logged."""
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.response.response_headers[PEER_METADATA_ID_HEADER] = "logged"
    entry.common_properties.metadata.filter_metadata[PEER_STASH_NAMESPACE].update(
        {PEER_METADATA_ID_HEADER: "stashed"})
    assert http_entry(entry).response_headers[PEER_METADATA_ID_HEADER] == "logged"
