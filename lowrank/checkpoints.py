"""Old path of lowrank.analysis.checkpoints."""

# TEMPORARY shim: removed once the notebooks import the new path
import sys

import lowrank.analysis.checkpoints as _module

sys.modules[__name__] = _module
