"""``python -m lowrank.analyze``: the DoRA paper's Figure 2 for your own checkpoints.

The command lives in :mod:`lowrank.analysis.command`; this module keeps its short name working.
"""

import sys

from lowrank.analysis.command import *  # noqa: F401,F403
from lowrank.analysis.command import main

if __name__ == "__main__":
    sys.exit(main())
