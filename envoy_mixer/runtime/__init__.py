"""What the three services' thin servers share: grpc.aio and admin lifecycle, health, settings,
config reload, and :func:`envoy_mixer.runtime.service.serve`. The services' pure cores never
import it (tests/test_import_rules.py).
"""
