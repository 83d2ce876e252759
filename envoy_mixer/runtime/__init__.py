"""What the three services' thin servers share: grpc.aio and admin lifecycle, health, settings,
config reload, fast metrics (:mod:`envoy_mixer.runtime.metrics`) and the one way a service
process runs (:func:`envoy_mixer.runtime.serve.serve`). The services' pure cores never import
it (tests/test_import_rules.py).
"""
