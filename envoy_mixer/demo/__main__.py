"""``python -m envoy_mixer.demo``: same as ``python -m envoy_mixer.demo.app``."""

import sys

from envoy_mixer.demo.app import main

sys.exit(main())
