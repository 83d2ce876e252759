"""House rules for the CA and security packages."""

from __future__ import annotations


def test_mixer_ca_is_a_registered_command() -> None:
    """``mixer ca`` parses with its three subcommands."""
    from envoy_mixer.cli import build_parser

    parser = build_parser()
    for sub in ("init", "issue --namespace a --service-account b", "rotate --namespace a "
                "--service-account b"):
        args = parser.parse_args(["ca", *sub.split()])
        assert args.command == "ca" and args.ca_command == sub.split()[0]
