"""lowrank: LoRA and DoRA from scratch, on DistilBERT, with the magnitude/direction analysis.

Importing the package loads nothing heavy. Each name below is imported from its module the first
time it is used (a module ``__getattr__``, PEP 562), and each module imports transformers, datasets,
PEFT or matplotlib only inside the functions that need them. So ``from lowrank import LoRALinear``
works in a plain PyTorch project, with only torch loaded; ``lowrank.load_backbone(...)`` loads
transformers when it is called.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of ``lowrank`` that defines it: the one list of public names (``__all__`` is
#: its keys). The package has three parts: the layers and training the course teaches (the modules at
#: this level), :mod:`lowrank.adapter_files` (the file format, crash-safe writing, PEFT interop) and
#: :mod:`lowrank.analysis` (ΔM/ΔD of anyone's checkpoints: ``python -m lowrank.analyze``).
_EXPORTS = {
    "DISTILBERT_HEAD": "adapters",
    "ParameterCount": "adapters",
    "adapter_layers": "adapters",
    "add_adapters": "adapters",
    "count_parameters": "adapters",
    "freeze_all_but_head": "adapters",
    "merge_adapters": "adapters",
    "targets_from_toggles": "adapters",
    "load_backbone": "backbone",
    "load_sentiment": "data",
    "DoRALinear": "dora",
    "LoRALinear": "lora",
    "magnitude_direction_change": "magnitude_direction",
    "export_peft": "adapter_files.peft_interop",
    "import_peft": "adapter_files.peft_interop",
    "load_adapters": "adapter_files.save_load",
    "save_adapters": "adapter_files.save_load",
    "accuracy": "training",
    "predict": "training",
    "tokenize": "training",
    "train": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

