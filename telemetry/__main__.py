"""``python -m telemetry``: the same CLI as ``mixer telemetry``."""

from __future__ import annotations

import sys

from telemetry.cli import main

if __name__ == "__main__":
    sys.exit(main())
