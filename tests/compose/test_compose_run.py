"""compose/: the compose file runs for real, and traffic through its ingress gets Istio's answers.

The stack is the user's compose/docker-compose.yml, unchanged, on a private Docker engine with
locally built stand-ins for the images it would pull (tests/compose/conftest.py says how);
Grafana and Jaeger have no package to build from, so they are not started. Through the ingress
on its published port: ``/api/hello`` is 200, ``/admin/users`` 403 (backend's policy),
``/api/limited`` 200 200 200 429 (examples/ratelimit.yaml: 3 per minute per client), and
Prometheus, on its published port, has scraped ``istio_requests_total`` for those answers.

Run it alone (as root) with ``.venv/bin/python -m pytest -s tests/compose/test_compose_run.py``;
``-s`` shows each phase's time. Here: about 2 minutes cold (the Debian base image and the
stand-ins built; add ~30 s where docker.io must be installed), about 40 s warm (only the
project's image rebuilt, on a source change).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # conftest is pytest's to import; at run time the fixture hands it over
    from .conftest import Stack

#: How long the stack may take from `up` to a 200 through the whole chain (first xDS/SDS
#: fetches, Envoy and Python start-up on a loaded 2-core machine).
READY_TIMEOUT = 150.0
#: Prometheus scrapes every 15 s (compose/prometheus/prometheus.yml); two rounds and slack.
SCRAPE_TIMEOUT = 60.0


def http_status(url: str, timeout: float = 5.0) -> int:
    """The HTTP status of a GET, 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_for_status(url: str, want: int, timeout: float) -> int:
    """Poll ``url`` until it answers ``want``; the last status seen."""
    deadline = time.monotonic() + timeout
    status = http_status(url)
    while status != want and time.monotonic() < deadline:
        time.sleep(1)
        status = http_status(url)
    return status


def prometheus_codes(base: str) -> set[str]:
    """The response codes that ``istio_requests_total`` has series for in Prometheus."""
    query = urllib.parse.urlencode({"query": "sum by (response_code) (istio_requests_total)"})
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query?{query}", timeout=5) as response:
            body: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return set()
    return {str(r["metric"].get("response_code")) for r in body["data"]["result"]}


def published_admin_ports(stack: Stack) -> dict[str, int]:
    """Host ports of our services' admin listeners (``--admin``), where the file publishes them."""
    out = {}
    for name, service in stack.compose["services"].items():
        args = [str(arg) for arg in service.get("command") or []]
        if "--admin" in args and name in stack.services:
            container_port = int(args[args.index("--admin") + 1].rpartition(":")[2])
            host = stack.published_port(name, container_port)
            if host is not None:
                out[name] = host
    return out


@pytest.mark.slow
def test_traffic_through_ingress_gets_200_403_429_and_lands_in_prometheus(
        compose_stack: Stack) -> None:
    """The running compose stack answers 200/403/429 at the ingress and Prometheus has them."""
    ingress = f"http://127.0.0.1:{compose_stack.host_port('ingress', 8080)}"
    prometheus = f"http://127.0.0.1:{compose_stack.host_port('prometheus', 9090)}"

    started = time.monotonic()
    status = wait_for_status(f"{ingress}/api/hello", 200, READY_TIMEOUT)
    assert status == 200, (f"/api/hello answered {status} after {READY_TIMEOUT:.0f} s\n"
                           f"{compose_stack.logs()}")
    # A 200 proves authz serves, not the rate limit service: Envoy fails open without it, and
    # a /api/limited answered that way would be a 200 where the fourth must be a 429.
    for name, port in published_admin_ports(compose_stack).items():
        status = wait_for_status(f"http://127.0.0.1:{port}/healthz", 200, READY_TIMEOUT)
        assert status == 200, f"{name} /healthz answered {status}\n{compose_stack.logs()}"
    compose_stack.engine.timings["ready"] = time.monotonic() - started

    assert http_status(f"{ingress}/admin/users") == 403, compose_stack.logs()
    limited = [http_status(f"{ingress}/api/limited") for _ in range(4)]
    assert limited == [200, 200, 200, 429], f"{limited}\n{compose_stack.logs()}"

    started = time.monotonic()
    want = {"200", "403", "429"}
    codes = prometheus_codes(prometheus)
    while not want <= codes and time.monotonic() - started < SCRAPE_TIMEOUT:
        time.sleep(2)
        codes = prometheus_codes(prometheus)
    assert want <= codes, (f"istio_requests_total in Prometheus has codes {sorted(codes)}, "
                           f"want {sorted(want)}\n{compose_stack.logs()}")
    compose_stack.engine.timings["scraped"] = time.monotonic() - started
