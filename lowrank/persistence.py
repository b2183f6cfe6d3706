"""Old path of :mod:`lowrank.adapter_files` (format, atomic, save_load, peft_interop)."""

# TEMPORARY shim: removed once the notebooks import the new path
from lowrank.adapter_files.atomic import *  # noqa: F401,F403
from lowrank.adapter_files.format import *  # noqa: F401,F403
from lowrank.adapter_files.peft_interop import *  # noqa: F401,F403
from lowrank.adapter_files.save_load import *  # noqa: F401,F403
