"""One provider module per ``mixer`` command (``envoy_mixer.cli.main`` imports only the one
that runs); the parsers themselves are in :mod:`controlplane.xds.cli`."""
