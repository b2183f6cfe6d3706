"""``python -m lowrank.analysis``: the same command as ``python -m lowrank.analyze``."""

import sys

from lowrank.analysis.command import main

sys.exit(main())
