"""The ``mixer`` entry point: every listed command registers, and --help imports no provider."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from envoy_mixer.cli.main import (
    COMMAND_MODULES,
    COMMANDS,
    Command,
    ProviderError,
    build_parser,
    chosen_command,
)

#: Libraries a provider's package pulls in; `mixer --help` must load none of them.
HEAVY = ("grpc", "aiohttp", "pydantic", "joserfc", "yaml", "cryptography", "envoy",
         "google.protobuf", "prometheus_client", "redis")


def test_every_listed_command_is_registered_by_its_provider() -> None:
    """The full parser imports every provider; each adds its command (else ProviderError)."""
    help_lines = [line.split()[0] for line in build_parser().format_help().splitlines()
                  if line.startswith("    ") and line.split()]
    assert [c.name for c in COMMANDS] == [n for n in help_lines if n in
                                           {c.name for c in COMMANDS}]
    assert tuple(c.module for c in COMMANDS) == COMMAND_MODULES


def test_lazy_help_lists_what_the_providers_register() -> None:
    """`mixer --help` from the table is word for word the full parser's help."""
    assert build_parser(only="").format_help() == build_parser().format_help()


def test_a_missing_provider_is_an_error() -> None:
    """A listed command whose module is gone fails loudly instead of vanishing from --help."""
    missing = (Command("gone", "envoy_mixer.cli.no_such_provider", "was here"),)
    with pytest.raises(ModuleNotFoundError, match="no_such_provider"):
        build_parser(commands=missing)
    with pytest.raises(ModuleNotFoundError):
        build_parser(only="gone", commands=missing)


def test_a_provider_that_registers_another_name_is_an_error() -> None:
    """The provider must add the command it is listed for."""
    wrong = (Command("renamed", "envoy_mixer.cli.check", "validate files"),)
    with pytest.raises(ProviderError, match="did not add 'mixer renamed'"):
        build_parser(commands=wrong)


@pytest.mark.parametrize(("argv", "command"), [
    ([], ""), (["--help"], ""), (["--version"], ""), (["check", "x.yaml"], "check"),
    (["-h", "ratelimit"], "ratelimit"), (["bogus"], ""),
])
def test_chosen_command_is_the_first_word(argv: list[str], command: str) -> None:
    """The command is the first non-option word, when it names a listed command."""
    assert chosen_command(argv) == command


@pytest.mark.slow
def test_help_imports_no_provider_nor_heavy_library() -> None:
    """`mixer --help` (importing the CLI and registering) loads no service or heavy library."""
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        from envoy_mixer.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
        heavy = {HEAVY!r}
        ours = ("ratelimit", "extauthz", "telemetry", "controlplane", "envoy_mixer.dev")
        loaded = [m for m in sys.modules
                  if any(m == p or m.startswith(p + ".") for p in heavy + ours)]
        print(",".join(sorted(loaded)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ratelimit", "telemetry", "check"])
def test_service_providers_register_without_heavy_imports(command: str) -> None:
    """`mixer ratelimit|telemetry|check --help` loads no gRPC, YAML or Prometheus library."""
    script = textwrap.dedent(f"""
        import sys
        from envoy_mixer.cli.main import build_parser
        build_parser(only={command!r})
        heavy = {HEAVY!r}
        print(",".join(sorted(m for m in sys.modules
                              if any(m == p or m.startswith(p + ".") for p in heavy))))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == ""
