"""File-based SDS documents: what Envoy's ``path_config_source`` reads.

Each file holds one ``DiscoveryResponse`` as JSON (JSON is YAML, and Envoy picks the parser by
the ``.json`` suffix), with the secret inline. Plain dicts with ``@type`` strings keep this free
of Envoy imports. The secret names are Istio's: ``default`` for the workload certificate and
``ROOTCA`` for the trust anchor, so a config written for Istio's SDS names works unchanged.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "ROOTCA_SECRET",
    "SECRET_TYPE",
    "WORKLOAD_SECRET",
    "sds_file_config",
    "tls_certificate_document",
    "validation_context_document",
]

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_SECRET = "default"
ROOTCA_SECRET = "ROOTCA"


def _response(secret: dict[str, Any]) -> str:
    return json.dumps({"resources": [secret]}, indent=2) + "\n"


def tls_certificate_document(chain_pem: bytes, key_pem: bytes,
                             name: str = WORKLOAD_SECRET) -> str:
    """The DiscoveryResponse carrying the workload's chain and key (write it with mode 0600)."""
    return _response({
        "@type": SECRET_TYPE,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": chain_pem.decode("ascii")},
            "private_key": {"inline_string": key_pem.decode("ascii")},
        },
    })


def validation_context_document(root_pem: bytes, name: str = ROOTCA_SECRET) -> str:
    """The DiscoveryResponse carrying the mesh root as a validation context."""
    return _response({
        "@type": SECRET_TYPE,
        "name": name,
        "validation_context": {"trusted_ca": {"inline_string": root_pem.decode("ascii")}},
    })


def sds_file_config(directory: str, secret: str) -> dict[str, Any]:
    """The ``SdsSecretConfig`` (as a dict) that points Envoy at ``<directory>/<secret>.json``.

    ``watched_directory`` makes Envoy re-read the file when the ``..data`` link is renamed in
    ``directory``, which is how :mod:`controlplane.ca.files` swaps a new certificate in.
    """
    return {
        "name": secret,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": f"{directory.rstrip('/')}/{secret}.json",
                "watched_directory": {"path": directory},
            },
        },
    }
