"""Old path of lowrank.analysis.row_changes."""

# TEMPORARY shim: removed once the notebooks import the new path
import sys

import lowrank.analysis.row_changes as _module

sys.modules[__name__] = _module
