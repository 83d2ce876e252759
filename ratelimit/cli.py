"""``mixer ratelimit`` and ``python -m ratelimit``: flags (with env fallbacks) -> running service.

Env fallbacks: ``MIXER_RATELIMIT_<FLAG>`` (then ``MIXER_<FLAG>``); for users migrating from
envoyproxy/ratelimit its names are honoured last: ``SHADOW_MODE``, ``NEAR_LIMIT_RATIO``,
``LIMIT_RESPONSE_HEADERS_ENABLED``, ``LIMIT_LIMIT_HEADER``, ``LIMIT_REMAINING_HEADER``,
``LIMIT_RESET_HEADER``, ``REDIS_TYPE``, ``REDIS_POOL_SIZE``, ``CACHE_KEY_PREFIX``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envoy_mixer.logs import configure_logging
from envoy_mixer.settings import ServerSettings, add_server_arguments, env_default

SERVICE = "ratelimit"
DEFAULT_LISTEN = "127.0.0.1:8081"
DEFAULT_ADMIN = "127.0.0.1:6070"


def _env(flag: str, default: str | None, *reference: str) -> str | None:
    value = env_default(SERVICE, flag, None)
    if value is not None:
        return value
    for name in reference:
        if name in os.environ:
            return os.environ[name]
    return default


def _bool(text: str | None) -> bool:
    return (text or "").strip().lower() in {"1", "true", "yes", "on"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of the rate limit service."""
    parser.add_argument(
        "--config", default=_env("config", None), metavar="PATH", type=Path,
        required=_env("config", None) is None,
        help="limits: one YAML file or a directory of them, one domain each "
        "(env MIXER_RATELIMIT_CONFIG)",
    )
    add_server_arguments(parser, service=SERVICE, listen=DEFAULT_LISTEN, admin=DEFAULT_ADMIN)
    parser.add_argument(
        "--backend", default=_env("backend", "memory"), choices=["memory", "redis"],
        help="where counters live (default memory; env MIXER_RATELIMIT_BACKEND)",
    )
    parser.add_argument(
        "--redis-url", default=_env("redis-url", None), metavar="URL",
        help="redis://[user:password@]host:port/db, rediss:// for TLS "
        "(env MIXER_RATELIMIT_REDIS_URL)",
    )
    parser.add_argument(
        "--redis-mode", default=(_env("redis-mode", "single", "REDIS_TYPE") or "single").lower(),
        choices=["single", "sentinel", "cluster"],
        help="single node, Sentinel (URL lists sentinels, path names the master) or Cluster",
    )
    parser.add_argument(
        "--redis-timeout", type=float, default=float(_env("redis-timeout", "0.25") or 0.25),
        metavar="SECONDS",
        help="bound on each Redis call; past it the call answers UNAVAILABLE (default 0.25)",
    )
    parser.add_argument(
        "--redis-pool-size", type=int,
        default=int(_env("redis-pool-size", "4", "REDIS_POOL_SIZE") or 4),
        help="Redis connections = script calls in flight; calls arriving meanwhile are batched "
        "into the next one (default 4)",
    )
    parser.add_argument(
        "--redis-prefix", default=_env("redis-prefix", "mixer:rl:", "CACHE_KEY_PREFIX"),
        help="namespace prepended to every Redis key (default mixer:rl:)",
    )
    parser.add_argument(
        "--shadow-mode", action=argparse.BooleanOptionalAction,
        default=_bool(_env("shadow-mode", "false", "SHADOW_MODE")),
        help="global shadow mode: count everything, never answer OVER_LIMIT",
    )
    parser.add_argument(
        "--response-headers", action=argparse.BooleanOptionalAction,
        default=_bool(_env("response-headers", "false", "LIMIT_RESPONSE_HEADERS_ENABLED")),
        help="add RateLimit-Limit/-Remaining/-Reset to responses (set by the service itself)",
    )
    parser.add_argument(
        "--near-limit-ratio", type=float,
        default=float(_env("near-limit-ratio", "0.8", "NEAR_LIMIT_RATIO") or 0.8),
        help="share of a limit above which hits count as near_limit (default 0.8)",
    )
    parser.add_argument(
        "--local-cache", action=argparse.BooleanOptionalAction,
        default=_bool(_env("local-cache", "true")),
        help="remember keys already over their limit for the current window and skip the "
        "backend for them (default on)",
    )
    parser.add_argument(
        "--reload-interval", type=float, default=float(_env("reload-interval", "0.5") or 0.5),
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
        reload_interval=args.reload_interval,
        limiter=LimiterSettings(
            shadow_mode=args.shadow_mode,
            near_limit_ratio=args.near_limit_ratio,
            local_cache=args.local_cache,
            response_headers=args.response_headers,
            limit_header=os.environ.get("LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
            remaining_header=os.environ.get("LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
            reset_header=os.environ.get("LIMIT_RESET_HEADER", "RateLimit-Reset"),
        ),
    )


class _BadSetting(Exception):
    """A flag value the backend rejected while the service was being built."""


def run_command(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code."""
    from envoy_mixer.service import Service, run
    from ratelimit.app import build

    configure_logging(args.log_level)
    if args.backend == "redis" and not args.redis_url:
        print("mixer ratelimit: --backend redis needs --redis-url (or MIXER_RATELIMIT_REDIS_URL)")
        return 2
    settings = settings_from_args(args)
    server = ServerSettings.from_args(SERVICE, args)

    def build_service() -> Service:
        # The backend is built inside the event loop; a bad --redis-url (scheme, TLS options,
        # mode) surfaces there as ValueError and must end in one line, not a traceback.
        try:
            return build(settings).service
        except ValueError as exc:
            raise _BadSetting(str(exc)) from exc

    try:
        return run(build_service, server)
    except _BadSetting as exc:
        print(f"mixer ratelimit: {exc}", file=sys.stderr)
        return 2


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
