"""``python -m envoy_mixer.dev.demo``: same as ``python -m envoy_mixer.dev.demo.app``."""

import sys

from envoy_mixer.dev.demo.app import main

sys.exit(main())
