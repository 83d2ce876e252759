"""The one serve glue and error convention: bad settings are one stderr line and exit 2."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest

from envoy_mixer.runtime.serve import EXIT_USAGE, usage_error

_BAD_BUILD = textwrap.dedent(
    """
    import sys
    from envoy_mixer.runtime.serve import serve
    from envoy_mixer.runtime.settings import ServerSettings, SettingError

    def build():
        raise SettingError("--redis-url: unsupported scheme 'ftp'")

    sys.exit(serve("demo", ServerSettings("demo", "127.0.0.1:0", "127.0.0.1:0"), build))
    """
)


def test_usage_error_prints_prog_and_message_and_returns_2() -> None:
    """usage_error writes '<prog>: <message>' and gives the usage exit code."""
    out = io.StringIO()
    assert usage_error("mixer demo", "bad flag", stream=out) == EXIT_USAGE == 2
    assert out.getvalue() == "mixer demo: bad flag\n"


@pytest.mark.slow
def test_setting_error_from_build_is_one_line_and_exit_2() -> None:
    """A SettingError raised while the service is built ends the process: one line, exit 2."""
    out = subprocess.run([sys.executable, "-c", _BAD_BUILD], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr == "mixer demo: --redis-url: unsupported scheme 'ftp'\n"
