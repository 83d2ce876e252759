"""``python -m extauthz``: the ``mixer authz`` command standalone."""

import sys

from extauthz.cli import main

if __name__ == "__main__":
    sys.exit(main())
