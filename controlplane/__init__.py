"""The control plane: what each Envoy of the mesh is told, as typed xDS resources.

- :mod:`controlplane.envoy`: Envoy configuration (listeners, routes, clusters, filters,
  bootstraps) built as protobuf messages from ``xds-protos``, rendered to YAML for static files.

The control plane may read the services' compiled models (for example the ratelimit config, to
derive route ``rate_limits`` actions); the services never import the control plane.
"""
