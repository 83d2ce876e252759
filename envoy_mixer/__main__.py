"""``python -m envoy_mixer``: the ``mixer`` command, for when its script is not on ``PATH``."""

from __future__ import annotations

import sys

from envoy_mixer.cli import main

if __name__ == "__main__":
    sys.exit(main())
