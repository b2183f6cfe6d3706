"""lowrank: LoRA and DoRA from scratch, on DistilBERT, with the magnitude/direction analysis."""

from lowrank.adapters import (
    DISTILBERT_HEAD,
    ParameterCount,
    adapter_layers,
    add_adapters,
    count_parameters,
    freeze_all_but_head,
    merge_adapters,
    targets_from_toggles,
)
from lowrank.backbone import load_backbone
from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear

__all__ = [
    "DISTILBERT_HEAD",
    "DoRALinear",
    "LoRALinear",
    "ParameterCount",
    "adapter_layers",
    "add_adapters",
    "count_parameters",
    "freeze_all_but_head",
    "load_backbone",
    "merge_adapters",
    "targets_from_toggles",
]
