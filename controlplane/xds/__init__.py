"""The xDS server of ``mixer pilot``: protocol only (Aggregated Discovery Service, SotW).

- :mod:`.types`: the type URLs and Envoy's push order;
- :mod:`.cache`: an immutable, versioned ``Snapshot`` per proxy and the ``SnapshotCache``
  that notifies open streams when a proxy's snapshot changes;
- :mod:`.protocol`: the per-stream state machine (nonces, ACK/NACK, stale nonces, the
  EDS-after-CDS request, reconnects), free of gRPC so tests drive it directly;
- :mod:`.status`: per proxy and type what was sent, ACKed or NACKed (``mixer proxy-status``);
- :mod:`.identity`: who is on the other end of a stream (mTLS peer certificate vs node id);
- :mod:`.server`: the ``grpc.aio`` servicer gluing the above to a stream;
- :mod:`.debug`, :mod:`.app`, :mod:`.cli`, :mod:`.bootstrap`: the admin JSON, the process,
  ``mixer pilot|proxy-status|proxy-config|envoy-config-xds`` and the minimal bootstrap.

What each proxy gets is decided elsewhere (:mod:`controlplane.pilot`); this package only
delivers it.
"""
