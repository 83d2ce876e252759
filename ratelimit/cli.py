"""``mixer ratelimit`` and ``python -m ratelimit``: flags (with env fallbacks) -> running service.

Every setting is read once, when the parser is built, into flag defaults; ``settings_from_args``
turns the parsed flags into the frozen ``RateLimitSettings``. Nothing reads the environment later.

Precedence, per setting: the flag; then ``MIXER_RATELIMIT_<FLAG>`` (then ``MIXER_<FLAG>``); then
envoyproxy/ratelimit's own variable, which means what the reference documents; then our default.
The reference's names: ``SHADOW_MODE``, ``QUOTA_MODE``, ``NEAR_LIMIT_RATIO``,
``LOCAL_CACHE_SIZE_IN_BYTES``, ``CACHE_KEY_PREFIX``, ``EXPIRATION_JITTER_MAX_SECONDS``,
``STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT``, ``RESPONSE_DYNAMIC_METADATA``,
``MERGE_DOMAIN_CONFIG``, ``LIMIT_RESPONSE_HEADERS_ENABLED``, ``LIMIT_LIMIT_HEADER``,
``LIMIT_REMAINING_HEADER``, ``LIMIT_RESET_HEADER``, ``BACKEND_TYPE``, ``REDIS_SOCKET_TYPE``,
``REDIS_TYPE``, ``REDIS_URL``, ``REDIS_AUTH``, ``REDIS_TLS``, ``REDIS_POOL_SIZE``, and the
per-second Redis ``REDIS_PERSECOND``, ``REDIS_PERSECOND_SOCKET_TYPE``, ``REDIS_PERSECOND_TYPE``,
``REDIS_PERSECOND_URL``, ``REDIS_PERSECOND_AUTH``, ``REDIS_PERSECOND_TLS``,
``REDIS_PERSECOND_POOL_SIZE``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from envoy_mixer.runtime.settings import ServerSettings, add_server_arguments

SERVICE = "ratelimit"
DEFAULT_LISTEN = "127.0.0.1:8081"
DEFAULT_ADMIN = "127.0.0.1:6070"
#: Our key namespace when the reference's settings are not in use (see docs/ratelimit.md).
DEFAULT_PREFIX = "mixer:rl:"
#: Rough size of one local-cache entry, to turn LOCAL_CACHE_SIZE_IN_BYTES into an entry bound.
LOCAL_CACHE_ENTRY_BYTES = 100

_TRUE = {"1", "t", "true", "yes", "on"}


class _Env:
    """The environment as read once: our names first, then the reference's."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)

    def ours(self, flag: str) -> str | None:
        name = flag.upper().replace("-", "_")
        specific = self.environ.get(f"MIXER_RATELIMIT_{name}")
        return specific if specific is not None else self.environ.get(f"MIXER_{name}")

    def get(self, flag: str, default: str | None, *reference: str) -> str | None:
        value = self.ours(flag)
        if value is not None:
            return value
        for name in reference:
            if name in self.environ:
                return self.environ[name]
        return default

    def flag(self, flag: str, *reference: str) -> bool:
        return _bool(self.get(flag, "false", *reference))


def _bool(text: str | None) -> bool:
    return (text or "").strip().lower() in _TRUE


def reference_redis_url(
    url: str, *, socket_type: str = "unix", redis_type: str = "single", auth: str = "",
    tls: bool = False,
) -> str:
    """A URL for envoyproxy/ratelimit's REDIS_URL (or REDIS_PERSECOND_URL) and its companions.

    The reference takes ``host:port`` (``tcp``) or a socket path (``unix``); for Sentinel
    ``master,sentinel1:port,sentinel2:port``; for Cluster ``node1:port,node2:port``; the
    password (or ``user:password``) in REDIS_AUTH. A value that is already a URL is kept.
    """
    if "://" in url:
        return url
    userinfo = ""
    if auth:
        user, sep, password = auth.rpartition(":")
        userinfo = f"{quote(user, safe='')}:{quote(password if sep else auth, safe='')}@"
    if socket_type.lower() == "unix":
        return f"unix://{userinfo}{url}"
    scheme = "rediss" if tls else "redis"
    parts = [p.strip() for p in url.split(",") if p.strip()]
    if redis_type.lower() == "sentinel" and len(parts) > 1:
        return f"{scheme}://{userinfo}{','.join(parts[1:])}/{parts[0]}"
    return f"{scheme}://{userinfo}{parts[0] if parts else url}"


def _reference_redis(env: _Env, prefix: str, default_url: str | None) -> str | None:
    """The URL from the reference's ``<prefix>URL`` group of variables (None if unset)."""
    e = env.environ
    url = e.get(f"{prefix}URL", default_url)
    if url is None:
        return None
    return reference_redis_url(
        url, socket_type=e.get(f"{prefix}SOCKET_TYPE", "unix"),
        redis_type=e.get(f"{prefix}TYPE", "single"), auth=e.get(f"{prefix}AUTH", ""),
        tls=_bool(e.get(f"{prefix}TLS")),
    )


def _reference_int(parser: argparse.ArgumentParser, env: _Env, name: str) -> int:
    """The reference's integer variable ``name`` (0 if unset); a bad value is a usage error."""
    text = env.environ.get(name, "").strip()
    try:
        return int(text or 0)
    except ValueError:
        # Not a flag's default, so argparse cannot check it: fail the same way it would.
        parser.error(f"{name}={text!r}: expected an integer")


def add_arguments(parser: argparse.ArgumentParser,
                  environ: Mapping[str, str] | None = None) -> None:
    """Every flag of the rate limit service, defaults read from ``environ`` (os.environ)."""
    env = _Env(os.environ if environ is None else environ)
    parser.add_argument(
        "--config", default=env.get("config", None), metavar="PATH", type=Path,
        required=env.get("config", None) is None,
        help="limits: one YAML file or a directory of them, one domain each "
        "(env MIXER_RATELIMIT_CONFIG)",
    )
    add_server_arguments(parser, service=SERVICE, listen=DEFAULT_LISTEN, admin=DEFAULT_ADMIN)
    reference_url = _reference_redis(env, "REDIS_", None)
    backend = env.get("backend", None)
    if backend is None:
        reference_backend = env.environ.get("BACKEND_TYPE", "").lower()
        backend = "redis" if reference_backend == "redis" or reference_url else "memory"
    parser.add_argument(
        "--backend", default=backend, choices=["memory", "redis"],
        help="where counters live (default memory; env MIXER_RATELIMIT_BACKEND, BACKEND_TYPE)",
    )
    redis_url = env.get("redis-url", None)
    parser.add_argument(
        "--redis-url", default=redis_url if redis_url is not None else reference_url,
        metavar="URL",
        help="redis://[user:password@]host:port/db, rediss:// for TLS "
        "(env MIXER_RATELIMIT_REDIS_URL, or the reference's REDIS_URL & co.)",
    )
    parser.add_argument(
        "--redis-mode", default=(env.get("redis-mode", "single", "REDIS_TYPE") or "single").lower(),
        choices=["single", "sentinel", "cluster"],
        help="single node, Sentinel (URL lists sentinels, path names the master) or Cluster",
    )
    parser.add_argument(
        "--redis-timeout", type=float, default=env.get("redis-timeout", "0.25") or "0.25",
        metavar="SECONDS",
        help="bound on each Redis call; past it the call answers UNAVAILABLE (default 0.25)",
    )
    parser.add_argument(
        "--redis-pool-size", type=int,
        default=env.get("redis-pool-size", "4", "REDIS_POOL_SIZE") or "4",
        help="Redis connections = script calls in flight; calls arriving meanwhile are batched "
        "into the next one (default 4)",
    )
    # The reference's keys have no namespace: with its Redis settings (or CACHE_KEY_PREFIX,
    # even empty) ours are byte for byte the same, so both services share counters.
    default_prefix = "" if redis_url is None and reference_url else DEFAULT_PREFIX
    parser.add_argument(
        "--redis-prefix", default=env.get("redis-prefix", default_prefix, "CACHE_KEY_PREFIX"),
        help="namespace prepended to every Redis key (default mixer:rl:, or the reference's "
        "empty one with its REDIS_URL; env CACHE_KEY_PREFIX)",
    )
    per_second = env.get("redis-per-second-url", None)
    if per_second is None and _bool(env.environ.get("REDIS_PERSECOND")):
        per_second = _reference_redis(
            env, "REDIS_PERSECOND_", "/var/run/nutcracker/ratelimitpersecond.sock")
    parser.add_argument(
        "--redis-per-second-url", default=per_second, metavar="URL",
        help="a second Redis for limits whose unit is second (env REDIS_PERSECOND=true with "
        "REDIS_PERSECOND_URL & co.)",
    )
    parser.add_argument(
        "--redis-per-second-mode",
        default=(env.get("redis-per-second-mode", "single", "REDIS_PERSECOND_TYPE")
                 or "single").lower(),
        choices=["single", "sentinel", "cluster"], help="topology of the per-second Redis",
    )
    parser.add_argument(
        "--redis-per-second-pool-size", type=int,
        default=env.get("redis-per-second-pool-size", "4", "REDIS_PERSECOND_POOL_SIZE") or "4",
        help="connections to the per-second Redis (default 4)",
    )
    parser.add_argument(
        "--expiration-jitter", type=int, metavar="SECONDS",
        default=env.get("expiration-jitter", "0", "EXPIRATION_JITTER_MAX_SECONDS") or "0",
        help="add 0..N-1 random seconds to each Redis key's expiry (default 0; the reference "
        "defaults EXPIRATION_JITTER_MAX_SECONDS to 300)",
    )
    parser.add_argument(
        "--shadow-mode", action=argparse.BooleanOptionalAction,
        default=env.flag("shadow-mode", "SHADOW_MODE"),
        help="global shadow mode: count everything, never answer OVER_LIMIT",
    )
    parser.add_argument(
        "--quota-mode", action=argparse.BooleanOptionalAction,
        default=env.flag("quota-mode", "QUOTA_MODE"),
        help="global quota mode: a request is over only when all its descriptors are",
    )
    parser.add_argument(
        "--stop-increment-when-over-limit", action=argparse.BooleanOptionalAction,
        default=env.flag("stop-increment-when-over-limit",
                         "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT"),
        help="a hit some limit refuses is not counted by the request's other limits",
    )
    parser.add_argument(
        "--response-dynamic-metadata", action=argparse.BooleanOptionalAction,
        default=env.flag("response-dynamic-metadata", "RESPONSE_DYNAMIC_METADATA"),
        help="return the request and the passed limits' metadata as dynamic_metadata",
    )
    parser.add_argument(
        "--merge-domains", action=argparse.BooleanOptionalAction,
        default=env.flag("merge-domains", "MERGE_DOMAIN_CONFIG"),
        help="one domain may span several files (else a duplicate domain is an error)",
    )
    parser.add_argument(
        "--response-headers", action=argparse.BooleanOptionalAction,
        default=env.flag("response-headers", "LIMIT_RESPONSE_HEADERS_ENABLED"),
        help="add RateLimit-Limit/-Remaining/-Reset to responses (set by the service itself)",
    )
    for flag, name, default in (
        ("limit-header", "LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
        ("remaining-header", "LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
        ("reset-header", "LIMIT_RESET_HEADER", "RateLimit-Reset"),
    ):
        parser.add_argument(f"--{flag}", default=env.get(flag, default, name), metavar="NAME",
                            help=f"header name for --response-headers (default {default})")
    parser.add_argument(
        "--near-limit-ratio", type=float,
        default=env.get("near-limit-ratio", "0.8", "NEAR_LIMIT_RATIO") or "0.8",
        help="share of a limit above which hits count as near_limit (default 0.8)",
    )
    cache_bytes = _reference_int(parser, env, "LOCAL_CACHE_SIZE_IN_BYTES")
    ours = env.ours("local-cache")
    parser.add_argument(
        "--local-cache", action=argparse.BooleanOptionalAction,
        default=_bool(ours) if ours is not None else cache_bytes > 0,
        help="remember keys already over their limit for the current window and skip the "
        "backend for them (default off, as the reference's; on with LOCAL_CACHE_SIZE_IN_BYTES)",
    )
    parser.add_argument(
        "--local-cache-entries", type=int,
        default=env.get("local-cache-entries", None)
        or str(max(1, cache_bytes // LOCAL_CACHE_ENTRY_BYTES) if cache_bytes else 50_000),
        help="most keys the local cache holds (default 50000, or "
        f"LOCAL_CACHE_SIZE_IN_BYTES / {LOCAL_CACHE_ENTRY_BYTES})",
    )
    parser.add_argument(
        "--reload-interval", type=float, default=env.get("reload-interval", "0.5") or "0.5",
        metavar="SECONDS", help="how often the config PATH is polled for changes",
    )


def settings_from_args(args: argparse.Namespace) -> Any:
    """The RateLimitSettings for parsed flags."""
    from ratelimit.app import RateLimitSettings
    from ratelimit.limiter import LimiterSettings

    return RateLimitSettings(
        config=args.config,
        backend=args.backend,
        redis_url=args.redis_url,
        redis_mode=args.redis_mode,
        redis_timeout=args.redis_timeout,
        redis_pool_size=args.redis_pool_size,
        redis_prefix=args.redis_prefix,
        per_second_url=args.redis_per_second_url,
        per_second_mode=args.redis_per_second_mode,
        per_second_pool_size=args.redis_per_second_pool_size,
        expiration_jitter=args.expiration_jitter,
        merge_domains=args.merge_domains,
        reload_interval=args.reload_interval,
        limiter=LimiterSettings(
            shadow_mode=args.shadow_mode,
            near_limit_ratio=args.near_limit_ratio,
            local_cache=args.local_cache,
            local_cache_entries=args.local_cache_entries,
            response_headers=args.response_headers,
            limit_header=args.limit_header,
            remaining_header=args.remaining_header,
            reset_header=args.reset_header,
            quota_mode=args.quota_mode,
            stop_increment_when_over_limit=args.stop_increment_when_over_limit,
            response_dynamic_metadata=args.response_dynamic_metadata,
        ),
    )


def run_command(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code (2 for a bad setting)."""
    from envoy_mixer.runtime.serve import serve, usage_error
    from ratelimit.app import build

    if args.backend == "redis" and not args.redis_url:
        return usage_error("mixer ratelimit",
                           "--backend redis needs --redis-url (or MIXER_RATELIMIT_REDIS_URL)")
    settings = settings_from_args(args)
    # The backend is built inside the event loop; a bad --redis-url (scheme, TLS options,
    # mode) raises SettingError there, which serve() turns into one line on stderr, exit 2.
    return serve(SERVICE, ServerSettings.from_args(SERVICE, args),
                 lambda: build(settings).service)


def register(subparsers: Any) -> None:
    """Add ``mixer ratelimit`` to the ``mixer`` CLI."""
    parser = subparsers.add_parser(
        "ratelimit", help="run the rate limit service (Envoy RLS)",
        description="Envoy rate limit service (envoy.service.ratelimit.v3), "
        "envoyproxy/ratelimit config format.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ratelimit``: the same flags as ``mixer ratelimit``."""
    parser = argparse.ArgumentParser(
        prog="python -m ratelimit", description="Envoy rate limit service."
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
