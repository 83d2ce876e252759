"""``python -m envoy_mixer.cli``: the ``mixer`` command (tests and ``mixer up`` use this form)."""

from __future__ import annotations

import sys

from envoy_mixer.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
