"""Old path of lowrank.analysis.callback."""

# TEMPORARY shim: removed once the notebooks import the new path
import sys

import lowrank.analysis.callback as _module

sys.modules[__name__] = _module
