"""``python -m gemma2_regress.perf``: see ``gemma2_regress.perf.cli``."""

import sys

from .cli import main

sys.exit(main())
