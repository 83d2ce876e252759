"""``mixer ca``: the mesh certificate authority on the command line.

- ``mixer ca init [--dir D] [--trust-domain TD]``: create the mesh root, or adopt the Istio
  plug-in CA files found in D; never overwrites an existing signer.
- ``mixer ca issue [--dir D] --namespace NS --service-account SA [--ttl 24h] [--out DIR]``:
  write a workload's ``cert-chain.pem``, ``key.pem``, ``root-cert.pem`` and the file-SDS
  documents ``default.json``/``ROOTCA.json`` into DIR, swapped in atomically.
- ``mixer ca rotate`` (same flags, plus ``--once``): keep that set fresh, reissuing when half
  of the lifetime is left.

Exit codes: 0 done, 1 a CA failure (message on stderr), 2 bad flags. Nothing secret is ever
printed: only identities, serial numbers, dates and the root's fingerprint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from controlplane.ca.authority import DEFAULT_WORKLOAD_TTL, MAX_WORKLOAD_TTL
from controlplane.ca.durations import format_duration, parse_duration
from controlplane.ca.errors import CAError, InvalidDuration
from controlplane.ca.files import write_bundle
from controlplane.ca.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from controlplane.ca.rotate import DEFAULT_GRACE_RATIO, Rotator
from controlplane.ca.store import init_ca, load_ca
from envoy_mixer.common.logs import configure_logging

__all__ = ["register"]

DEFAULT_DIR = "mesh-ca"


def _now() -> datetime:
    return datetime.now(UTC)


def _ttl(text: str) -> timedelta:
    try:
        return parse_duration(text, maximum=MAX_WORKLOAD_TTL)
    except InvalidDuration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("MIXER_CA_DIR", DEFAULT_DIR)),
        help=f"the CA directory (env MIXER_CA_DIR, default ./{DEFAULT_DIR})",
    )


def _workload_flags(parser: argparse.ArgumentParser) -> None:
    _dir_flag(parser)
    parser.add_argument("--namespace", required=True, help="the workload's namespace")
    parser.add_argument("--service-account", required=True,
                        help="the workload's service account")
    parser.add_argument("--ttl", type=_ttl, default=DEFAULT_WORKLOAD_TTL,
                        help="certificate lifetime, e.g. 24h, 90m (default 24h, at most 90 days)")
    parser.add_argument("--out", type=Path, default=Path("."),
                        help="where to write the files (default: the current directory)")


def register(subparsers: Any) -> None:
    """Add ``mixer ca`` with ``init``, ``issue`` and ``rotate``."""
    parser = subparsers.add_parser(
        "ca", help="mesh certificate authority (Istio's Citadel): SPIFFE workload certificates",
        description="Create the mesh root and issue SPIFFE workload certificates for Envoy's "
                    "file-based SDS.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="ca_command", metavar="{init,issue,rotate}")

    init = sub.add_parser("init", help="create the mesh root or adopt a plug-in CA")
    _dir_flag(init)
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN,
                      help=f"the mesh's SPIFFE trust domain (default {DEFAULT_TRUST_DOMAIN})")
    init.set_defaults(func=_init)

    issue = sub.add_parser("issue", help="issue one workload certificate set")
    _workload_flags(issue)
    issue.set_defaults(func=_issue)

    rotate = sub.add_parser("rotate", help="keep a workload certificate set fresh")
    _workload_flags(rotate)
    rotate.add_argument("--grace-ratio", type=_ratio, default=DEFAULT_GRACE_RATIO,
                        help="reissue when this fraction of the lifetime is left (default 0.5)")
    rotate.add_argument("--once", action="store_true",
                        help="check (and reissue if due) once, then exit, e.g. from cron")
    rotate.add_argument("--log-level", default="info", help="log level (default info)")
    rotate.set_defaults(func=_rotate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _fail(exc: CAError) -> int:
    print(f"mixer ca: error: {exc}", file=sys.stderr)
    return 1


def _init(args: argparse.Namespace) -> int:
    try:
        result = init_ca(args.dir, args.trust_domain, clock=_now)
    except CAError as exc:
        return _fail(exc)
    except OSError as exc:
        print(f"mixer ca: error: cannot write {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    ca = result.ca
    fingerprint = ca.root.fingerprint(hashes.SHA256()).hex(":")
    what = {
        "created": "created a new mesh root",
        "plugged": "adopted the plug-in CA (ca-cert.pem signs, root-cert.pem is the anchor)",
        "existing": "already initialised; nothing changed",
    }[result.outcome]
    print(f"{args.dir}: {what}")
    print(f"trust domain: {ca.trust_domain}")
    print(f"root: {ca.root.subject.rfc4514_string()} (SHA-256 {fingerprint})")
    print(f"root expires: {ca.root.not_valid_after_utc.isoformat()}")
    return 0


def _identity(args: argparse.Namespace, trust_domain: str) -> SpiffeId:
    return SpiffeId(trust_domain, args.namespace, args.service_account)


def _issue(args: argparse.Namespace) -> int:
    try:
        ca = load_ca(args.dir)
        identity = _identity(args, ca.trust_domain)
        issued = ca.issue(identity, now=_now(), ttl=args.ttl)
        write_bundle(args.out, issued)
    except CAError as exc:
        return _fail(exc)
    except OSError as exc:
        print(f"mixer ca: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    cert = issued.certificate
    print(f"issued {identity.uri} (serial {cert.serial_number:x}, ttl {format_duration(args.ttl)})")
    print(f"valid until {cert.not_valid_after_utc.isoformat()}; files in {args.out}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        identity = _identity(args, load_ca(args.dir).trust_domain)
    except CAError as exc:
        return _fail(exc)
    rotator = Rotator(load_ca=lambda: load_ca(args.dir), identity=identity, out=args.out,
                      clock=_now, ttl=args.ttl, grace_ratio=args.grace_ratio)
    if args.once:
        decision = rotator.tick()
        if decision.reason == "failed":
            print(f"mixer ca: error: {decision.error}", file=sys.stderr)
            return 1
        what = f"reissued ({decision.reason})" if decision.reason else "still fresh"
        print(f"{identity.uri}: {what}; next rotation due {decision.next_check.isoformat()}")
        return 0
    # Only the long-running form takes over logging (JSON lines on stderr, like the services).
    configure_logging(args.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rotator.run(stop)
    return 0
