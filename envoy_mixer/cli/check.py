"""``mixer check PATH...``: validate config files the way each service would load them.

Kind detection, per file, by the documents' own markers (``--kind`` skips it):

- ``apiVersion: security.istio.io/...`` (or an Istio security ``kind``) → authorization
  policies (``extauthz.policy``);
- a top-level ``domain:`` or ``descriptors:`` → rate limits (``ratelimit.config``), so a limits
  file with an empty domain is still reported as one, with the reference's error;
- a top-level telemetry section (``metrics:``, ``cardinality:``, ``access_log:``, ...) →
  telemetry config (``telemetry.config``);
- anything else: the kind cannot be told, and the report says so and points at ``--kind``.

A file is loaded on its own. In a directory every file is checked on its own (so every bad file
is reported, where a service stops at the first), then the good files of one kind are loaded
together as a service given the directory as ``--config`` loads it, so cross-file errors (the
same rate limit domain in two files, two telemetry configs) fail as they would at startup; the
files are added one by one, so each file clashing with those before it is named. A directory
mixing kinds gets a note: no single service takes it. ``--merge-domains`` (env
``MERGE_DOMAIN_CONFIG``) checks rate limits as the service does with that setting.

Each file prints ``OK <file> (<kind>)`` or ``FAIL <file> (<kind>)`` with the loader's precise
errors (file, line, field); the exit code is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from envoy_mixer.common.errors import ConfigError, ConfigErrors

KINDS = ("authz", "ratelimit", "telemetry")

_ISTIO_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"})
_RATELIMIT_KEYS = frozenset({"domain", "descriptors"})
_TRUE = {"1", "t", "true", "yes", "on"}


class UnknownKind(ConfigError):
    """A file whose documents carry none of the three kinds' markers."""


def _telemetry_keys() -> frozenset[str]:
    from telemetry.config import TelemetryModel

    return frozenset(TelemetryModel.model_fields)


def detect_kind(path: Path) -> str:
    """``authz``, ``ratelimit`` or ``telemetry`` for one file.

    Raises ConfigError on bad YAML and UnknownKind when no document says what it is.
    """
    from envoy_mixer.common.yamlsrc import load_file  # late: registering must not load YAML

    docs = load_file(path)
    maps = [doc.data for doc in docs if isinstance(doc.data, dict)]
    for data in maps:
        api = data.get("apiVersion")
        if (isinstance(api, str) and api.startswith("security.istio.io")) or (
                data.get("kind") in _ISTIO_KINDS):
            return "authz"
    if any(_RATELIMIT_KEYS & data.keys() for data in maps):
        return "ratelimit"
    telemetry = _telemetry_keys()
    if any(telemetry & data.keys() for data in maps):
        return "telemetry"
    raise UnknownKind(
        "cannot tell which kind of config this is: no Istio apiVersion (authz), no "
        "domain/descriptors (ratelimit), no " + "/".join(sorted(telemetry)) + " (telemetry); "
        "name it with --kind authz|ratelimit|telemetry",
        file=path.name,
    )


def _loader(kind: str, merge_domains: bool = False) -> Callable[[Path], Any]:
    if kind == "authz":
        from extauthz.policy import load_policies

        return load_policies
    if kind == "ratelimit":
        from ratelimit.config import load_config as load_limits

        return lambda path: load_limits(path, merge_domains=merge_domains)
    from telemetry.config import load_config as load_telemetry

    return load_telemetry


def _errors(exc: ConfigError) -> list[ConfigError]:
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


def check_file(path: Path, kind: str | None = None,
               merge_domains: bool = False) -> tuple[str, list[str]]:
    """Validate one file: its kind and the error lines (empty when it is valid)."""
    found = kind or "yaml"
    try:
        found = kind or detect_kind(path)
        _loader(found, merge_domains)(path)
    except UnknownKind as exc:
        return "unknown", [str(exc)]
    except ConfigError as exc:
        return found, [ConfigError.__str__(e) for e in _errors(exc)]
    return found, []


def _load_group(kind: str, root: Path, files: list[Path], whole: bool,
                merge_domains: bool) -> None:
    """Load ``files`` (all of ``kind``) from directory ``root`` as one service config."""
    if whole:
        # Every file of the directory is of this kind: exactly the service's own load.
        _loader(kind, merge_domains)(root)
        return
    if kind == "ratelimit":
        from ratelimit.config import load_texts

        load_texts([(f.name, f.read_text(encoding="utf-8")) for f in files],
                   merge_domains=merge_domains)
    elif kind == "authz":
        from envoy_mixer.common.yamlsrc import load_file
        from extauthz.policy import compile_documents

        compile_documents([doc for f in files for doc in load_file(f)], base_dir=root)
    elif len(files) > 1:
        raise ConfigError("expected one YAML document for the telemetry config "
                          "(this directory holds several telemetry files)", file=files[-1].name)
    else:
        _loader(kind)(files[0])


def _report(root: Path, kind: str, files: list[Path], errors: list[ConfigError],
            out: Any, err: Any) -> int:
    """Print OK/FAIL per file (errors go to the file they name); returns the failures."""
    failed = 0
    named = {f.name for f in files}
    for file in files:
        mine = [e for e in errors if e.file == file.name]
        if mine:
            failed += 1
            print(f"FAIL {file} ({kind})", file=err)
            for e in mine:
                print(f"  {ConfigError.__str__(e)}", file=err)
        else:
            print(f"OK {file} ({kind})", file=out)
    rest = [e for e in errors if e.file not in named]
    if rest:
        failed += 1
        print(f"FAIL {root} ({kind})", file=err)
        for e in rest:
            print(f"  {ConfigError.__str__(e)}", file=err)
    return failed


def _check_directory(root: Path, files: list[Path], kind: str | None, merge_domains: bool,
                     out: Any, err: Any) -> int:
    failed = 0
    groups: dict[str, list[Path]] = {}
    for file in files:
        try:
            found = kind or detect_kind(file)
        except UnknownKind as exc:
            failed += 1
            print(f"FAIL {file} (unknown)\n  {exc}", file=err)
            continue
        except ConfigError as exc:
            failed += 1
            print(f"FAIL {file} (yaml)", file=err)
            for e in _errors(exc):
                print(f"  {ConfigError.__str__(e)}", file=err)
            continue
        groups.setdefault(found, []).append(file)
    if len(groups) > 1:
        print(f"NOTE {root}: holds {', '.join(sorted(groups))} files; no single service takes "
              "it as --config (each loads every *.yaml of its directory)", file=err)
    for found, group in groups.items():
        # Each file alone first (a service stops at the first bad file, a check should not),
        # then the good ones together, for the errors only a whole directory has.
        errors: list[ConfigError] = []
        good: list[Path] = []
        for file in group:
            try:
                _loader(found, merge_domains)(file)
                good.append(file)
            except ConfigError as exc:
                errors += _errors(exc)
        # Added one by one, so every file clashing with the ones before it is named (a load
        # stops at the first clash), in the service's order (by name).
        accepted: list[Path] = []
        for file in good:
            try:
                _load_group(found, root, [*accepted, file], False, merge_domains)
                accepted.append(file)
            except ConfigError as exc:
                errors += _errors(exc)
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(ConfigError(f"cannot read: {exc}", file=file.name))
        if accepted and len(accepted) == len(files):
            try:
                _load_group(found, root, accepted, True, merge_domains)
            except ConfigError as exc:  # the service's own load of the directory has the last word
                errors += _errors(exc)
        failed += _report(root, found, group, errors, out, err)
    return failed


def check_paths(paths: Sequence[Path], kind: str | None = None,
                out: Any = None, err: Any = None, merge_domains: bool = False) -> int:
    """Check every PATH (file or directory), print the results; returns the exit code."""
    from envoy_mixer.common.yamlsrc import config_files

    out = out or sys.stdout
    err = err or sys.stderr
    failed = 0
    for root in paths:
        try:
            files = config_files(root)
        except (ConfigError, OSError) as exc:
            print(f"ERROR {root}: {exc}", file=err)
            failed += 1
            continue
        if not files:
            print(f"ERROR {root}: no *.yaml or *.yml files", file=err)
            failed += 1
            continue
        if root.is_dir():
            failed += _check_directory(root, files, kind, merge_domains, out, err)
            continue
        found, errors = check_file(root, kind, merge_domains)
        if errors:
            failed += 1
            print(f"FAIL {root} ({found})", file=err)
            for line in errors:
                print(f"  {line}", file=err)
        else:
            print(f"OK {root} ({found})", file=out)
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``mixer check``."""
    p = subparsers.add_parser(
        "check", help="validate policy, rate-limit and telemetry config files",
        description="Validate config files as the services load them (kind detected per "
        "file, a directory loaded whole); non-zero exit on error.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or directory")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="skip detection and check every file as this kind")
    merge = os.environ.get("MIXER_RATELIMIT_MERGE_DOMAINS",
                           os.environ.get("MERGE_DOMAIN_CONFIG", ""))
    p.add_argument("--merge-domains", action=argparse.BooleanOptionalAction,
                   default=merge.strip().lower() in _TRUE,
                   help="rate limits: one domain may span files, as with the service's "
                   "--merge-domains (env MERGE_DOMAIN_CONFIG)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``mixer check``."""
    return check_paths(args.paths, args.kind, merge_domains=args.merge_domains)
