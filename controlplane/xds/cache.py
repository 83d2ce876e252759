"""Immutable, versioned snapshots of what each proxy should have, and who to tell on change.

A :class:`Snapshot` holds, per type URL, the resources by name, already packed into ``Any``
(packed once per snapshot, not once per stream), and a per-type version that is a hash of the
content. Two snapshots built from the same mesh therefore carry the same versions, so a
regenerated but unchanged proxy (or type) is never pushed again, and a restarted control plane
hands out versions its proxies already know.

:class:`SnapshotCache` maps a proxy key (``name.namespace``) to its snapshot. ``set_snapshot``
replaces it and wakes the streams of that proxy only when some type's version changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from controlplane.xds.types import PUSH_ORDER, SECRET

__all__ = ["Snapshot", "SnapshotCache", "resource_name"]

Listener = Callable[[str], None]


def resource_name(message: Message) -> str:
    """The xDS name of a resource (``cluster_name`` for a ClusterLoadAssignment)."""
    for attr in ("name", "cluster_name"):
        value = getattr(message, attr, None)
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"{type(message).__name__} has no name")


def _version(resources: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(resources[name].SerializeToString(deterministic=True))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one proxy should have: resources by type URL and name, and a version per type."""

    resources: Mapping[str, Mapping[str, Any]]
    versions: Mapping[str, str]
    #: Snapshot-wide version: a hash of the per-type versions.
    version: str
    #: Secret names whose resource carries a private key (never shown by debug views).
    secret_bearing: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, by_type: Mapping[str, Iterable[Message]]) -> Snapshot:
        """Pack ``by_type`` (type URL -> messages) into a snapshot; duplicate names fail."""
        resources: dict[str, Mapping[str, Any]] = {}
        versions: dict[str, str] = {}
        keyed: set[str] = set()
        for type_url in PUSH_ORDER:
            packed: dict[str, Any] = {}
            for message in by_type.get(type_url, ()):
                name = resource_name(message)
                if name in packed:
                    # A duplicate name in one response is a protocol error Envoy NACKs.
                    raise ValueError(f"duplicate {type_url.rsplit('.', 1)[-1]} '{name}'")
                any_ = Any()
                any_.Pack(message)
                packed[name] = any_
                if type_url == SECRET and message.HasField("tls_certificate"):
                    keyed.add(name)
            resources[type_url] = MappingProxyType(packed)
            versions[type_url] = _version(packed)
        overall = hashlib.sha256("".join(versions[t] for t in PUSH_ORDER).encode())
        return cls(MappingProxyType(resources), MappingProxyType(versions),
                   overall.hexdigest()[:12], frozenset(keyed))

    def of(self, type_url: str) -> Mapping[str, Any]:
        """The resources of one type by name (empty for a type the snapshot lacks)."""
        return self.resources.get(type_url, MappingProxyType({}))


class SnapshotCache:
    """The current snapshot of each proxy; tells subscribers which proxies changed."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._listeners: dict[str, set[Listener]] = {}

    def get(self, key: str) -> Snapshot | None:
        """The snapshot of proxy ``key``, if it has one."""
        return self._snapshots.get(key)

    def proxies(self) -> tuple[str, ...]:
        """Every proxy key with a snapshot."""
        return tuple(sorted(self._snapshots))

    def set_snapshot(self, key: str, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` for ``key``; notify its streams if any version changed.

        Returns True when something changed (and the proxy's streams were told).
        """
        old = self._snapshots.get(key)
        self._snapshots[key] = snapshot
        if old is not None and old.versions == snapshot.versions:
            return False
        for listener in tuple(self._listeners.get(key, ())):
            listener(key)
        return True

    def set_all(self, snapshots: Mapping[str, Snapshot]) -> tuple[str, ...]:
        """Replace every snapshot at once: proxies absent from ``snapshots`` lose theirs.

        Returns the keys that changed (only those streams are woken).
        """
        changed = [key for key, snap in snapshots.items() if self.set_snapshot(key, snap)]
        for key in set(self._snapshots) - set(snapshots):
            del self._snapshots[key]
            changed.append(key)
        return tuple(sorted(changed))

    def subscribe(self, key: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(key)`` whenever ``key``'s snapshot changes; returns unsubscribe."""
        self._listeners.setdefault(key, set()).add(listener)

        def unsubscribe() -> None:
            self._listeners.get(key, set()).discard(listener)

        return unsubscribe
