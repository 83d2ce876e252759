"""``python -m ratelimit``: the rate limit service, same flags as ``mixer ratelimit``."""

import sys

from ratelimit.cli import main

if __name__ == "__main__":
    sys.exit(main())
