"""Old path of lowrank.analysis.streaming."""

# TEMPORARY shim: removed once the notebooks import the new path
import sys

import lowrank.analysis.streaming as _module

sys.modules[__name__] = _module
