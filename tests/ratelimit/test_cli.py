"""``mixer ratelimit`` settings: our flags, our env names, the reference's env names, precedence."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format

from ratelimit import cli

REFERENCE = Path(__file__).parent / "configs" / "reference"


def settings(environ: Mapping[str, str], *argv: str) -> Any:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser, environ)
    return cli.settings_from_args(parser.parse_args(["--config", "limits", *argv]))


def test_defaults_are_the_references_where_counts_depend_on_them() -> None:
    """No env: local cache off, global modes off, our memory backend and key namespace."""
    s = settings({})
    assert s.limiter.local_cache is False
    assert (s.limiter.quota_mode, s.limiter.stop_increment_when_over_limit,
            s.limiter.response_dynamic_metadata, s.merge_domains) == (False, False, False, False)
    assert (s.backend, s.redis_prefix, s.expiration_jitter) == ("memory", "mixer:rl:", 0)


def test_local_cache_size_in_bytes_turns_the_cache_on() -> None:
    """LOCAL_CACHE_SIZE_IN_BYTES > 0 turns the local cache on, bounded by that size."""
    s = settings({"LOCAL_CACHE_SIZE_IN_BYTES": "1000000"})
    assert s.limiter.local_cache is True
    assert s.limiter.local_cache_entries == 1_000_000 // cli.LOCAL_CACHE_ENTRY_BYTES
    assert settings({"LOCAL_CACHE_SIZE_IN_BYTES": "0"}).limiter.local_cache is False
    # Our own name wins over the reference's.
    assert settings({"LOCAL_CACHE_SIZE_IN_BYTES": "1000000",
                     "MIXER_RATELIMIT_LOCAL_CACHE": "false"}).limiter.local_cache is False


def test_reference_switches() -> None:
    """QUOTA_MODE, STOP_CACHE_KEY_..., RESPONSE_DYNAMIC_METADATA, MERGE_DOMAIN_CONFIG, jitter."""
    s = settings({"QUOTA_MODE": "true", "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT": "True",
                  "RESPONSE_DYNAMIC_METADATA": "1", "MERGE_DOMAIN_CONFIG": "t",
                  "EXPIRATION_JITTER_MAX_SECONDS": "300", "SHADOW_MODE": "false"})
    assert s.limiter.quota_mode and s.limiter.stop_increment_when_over_limit
    assert s.limiter.response_dynamic_metadata and s.merge_domains
    assert s.expiration_jitter == 300 and not s.limiter.shadow_mode
    # A flag beats every environment variable.
    assert settings({"QUOTA_MODE": "true"}, "--no-quota-mode").limiter.quota_mode is False


def test_headers_come_from_the_settings_not_the_live_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LIMIT_*_HEADER are read once with the rest, never straight from os.environ later."""
    monkeypatch.setenv("LIMIT_LIMIT_HEADER", "X-From-Process-Env")
    s = settings({"LIMIT_LIMIT_HEADER": "X-Limit", "LIMIT_RESET_HEADER": "X-Reset"})
    assert (s.limiter.limit_header, s.limiter.remaining_header, s.limiter.reset_header) == (
        "X-Limit", "RateLimit-Remaining", "X-Reset")


def test_cache_key_prefix_even_empty_is_used_verbatim() -> None:
    """CACHE_KEY_PREFIX (empty included) replaces our mixer:rl: namespace."""
    assert settings({"CACHE_KEY_PREFIX": ""}).redis_prefix == ""
    assert settings({"CACHE_KEY_PREFIX": "rl_"}).redis_prefix == "rl_"
    assert settings({"CACHE_KEY_PREFIX": "rl_",
                     "MIXER_RATELIMIT_REDIS_PREFIX": "x:"}).redis_prefix == "x:"


@pytest.mark.parametrize(("environ", "url"), [
    ({"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "redis.internal:6379"},
     "redis://redis.internal:6379"),
    ({"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "r:6380", "REDIS_AUTH": "p@ss", "REDIS_TLS": "true"},
     "rediss://:p%40ss@r:6380"),
    ({"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "mymaster,s1:26379,s2:26379",
      "REDIS_TYPE": "SENTINEL", "REDIS_AUTH": "user:pw"},
     "redis://user:pw@s1:26379,s2:26379/mymaster"),
    ({"REDIS_URL": "/var/run/redis.sock"}, "unix:///var/run/redis.sock"),
])
def test_reference_redis_settings(environ: dict[str, str], url: str) -> None:
    """The reference's REDIS_* select the Redis backend, its URL, and its empty key prefix."""
    s = settings(environ)
    assert (s.backend, s.redis_url, s.redis_prefix) == ("redis", url, "")


def test_reference_per_second_redis() -> None:
    """REDIS_PERSECOND=true with REDIS_PERSECOND_* gives the per-second Redis."""
    s = settings({"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "main:6379",
                  "REDIS_PERSECOND": "true", "REDIS_PERSECOND_SOCKET_TYPE": "tcp",
                  "REDIS_PERSECOND_URL": "fast:6379", "REDIS_PERSECOND_POOL_SIZE": "7"})
    assert (s.per_second_url, s.per_second_pool_size) == ("redis://fast:6379", 7)
    assert settings({"REDIS_PERSECOND_URL": "fast:6379"}).per_second_url is None


def test_redis_backend_without_url_fails_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--backend redis without a URL: one line on stderr, nothing on stdout, exit 2."""
    for name in ("REDIS_URL", "MIXER_RATELIMIT_REDIS_URL", "MIXER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["--config", str(tmp_path), "--backend", "redis"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--backend redis needs --redis-url" in captured.err


@pytest.mark.slow
def test_service_configured_only_by_reference_env(
    start_mixer: Callable[..., Any], redis_url: str, tmp_path: Path,
    free_port: Callable[[], int],
) -> None:
    """Configured by the reference's variables only: merged domain, its keys, dynamic metadata."""
    limits = tmp_path / "config"
    limits.mkdir()
    for name in ("merge_domain_key1.yaml", "merge_domain_key2.yaml"):
        shutil.copy(REFERENCE / name, limits / name)
    grpc_port, admin_port = free_port(), free_port()
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    start_mixer(
        ["ratelimit", "--config", str(limits), "--listen", f"127.0.0.1:{grpc_port}",
         "--admin", f"127.0.0.1:{admin_port}"], admin_port,
        env={"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": f"127.0.0.1:{port}",
             "MERGE_DOMAIN_CONFIG": "true", "RESPONSE_DYNAMIC_METADATA": "true"},
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        entry = ratelimit_pb2.RateLimitDescriptor.Entry
        response = stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="test-domain", descriptors=[
            ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="key2", value="value2")]),
        ]), timeout=5)
    assert response.statuses[0].current_limit.requests_per_unit == 20  # from the second file
    assert json_format.MessageToDict(response.dynamic_metadata) == {
        "domain": "test-domain", "descriptors": [{"entries": ["key2=value2"]}]}
    r = redis.Redis(host="127.0.0.1", port=int(port), decode_responses=True)
    keys = r.keys("*")
    r.close()
    assert len(keys) == 1 and keys[0].startswith("test-domain_key2_value2_")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MIXER_RATELIMIT_REDIS_TIMEOUT", "abc",
     "argument --redis-timeout: invalid float value: 'abc'"),
    ("REDIS_POOL_SIZE", "four", "argument --redis-pool-size: invalid int value: 'four'"),
    ("NEAR_LIMIT_RATIO", "high", "argument --near-limit-ratio: invalid float value: 'high'"),
    ("LOCAL_CACHE_SIZE_IN_BYTES", "1MB", "LOCAL_CACHE_SIZE_IN_BYTES='1MB': expected an integer"),
    ("MIXER_LOG_LEVEL", "loud", "argument --log-level: invalid log level 'loud'"),
    ("MIXER_RATELIMIT_LISTEN", "nowhere", "argument --listen: expected HOST:PORT, got 'nowhere'"),
])
def test_bad_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    variable: str, value: str, message: str,
) -> None:
    """A non-numeric (or invalid) env value fails like the flag would: stderr, exit 2."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--config", str(tmp_path)])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err
