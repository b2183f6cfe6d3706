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
from lowrank.data import load_sentiment
from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear
from lowrank.magnitude_direction import magnitude_direction_change
from lowrank.persistence import export_peft, import_peft, load_adapters, save_adapters
from lowrank.training import accuracy, predict, tokenize, train

__all__ = [
    "DISTILBERT_HEAD",
    "DoRALinear",
    "LoRALinear",
    "ParameterCount",
    "accuracy",
    "adapter_layers",
    "add_adapters",
    "count_parameters",
    "export_peft",
    "freeze_all_but_head",
    "import_peft",
    "load_adapters",
    "load_backbone",
    "load_sentiment",
    "magnitude_direction_change",
    "merge_adapters",
    "predict",
    "save_adapters",
    "targets_from_toggles",
    "tokenize",
    "train",
]
