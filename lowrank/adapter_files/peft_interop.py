"""PEFT interop: export to a folder PEFT loads, import a PEFT LoRA/DoRA folder, and a PEFT twin in memory.

Taught in notebook A2 (in_practice), "Export to PEFT, load with PEFT" and "Import a PEFT adapter into the
from-scratch layers"; notebook 03, section 4, compares a model with its PEFT twin (:func:`peft_twin`).

An exported ``adapter_model.safetensors`` also records the configuration values it belongs with, and
:func:`import_peft` refuses a configuration that differs (a torn pair: files of two exports). rsLoRA
(``alpha/sqrt(rank)``) maps to PEFT's ``use_rslora``; a ``scaling`` no rule gives is refused on export.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank.adapter_files.format import (
    CONFIG_FILE,
    PAIR_KEY,
    PAIRED_FIELDS,
    PEFT_PREFIX,
    PEFT_TENSORS_FILE,
    UNSUPPORTED_PEFT_OPTIONS,
    read_safetensors,
    refuse_base_changing_init,
    write_adapter_files,
)
from lowrank.adapter_files.save_load import _show, adapter_config, fit_and_copy, trainable_tensors
from lowrank.adapters import adapter_layers
from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear


def peft_config(model: nn.Module):
    """PEFT's ``LoraConfig`` for the adapters of ``model``: same method, rank, alpha, scaling rule
    (``use_rslora``), dropout and targets.

    ``target_modules`` lists the adapted modules by name (PEFT has no default target list for
    DistilBERT); the other trainable top-level modules (the classification head) become
    ``modules_to_save``. Used by :func:`export_peft` and :func:`peft_twin`.
    """
    from peft import LoraConfig

    config = adapter_config(model)
    return LoraConfig(
        r=config["rank"], lora_alpha=config["alpha"], lora_dropout=config["dropout"],
        target_modules=sorted(config["targets"]), use_dora=config["method"] == "dora",
        use_rslora=config["scaling_rule"] == "alpha/sqrt(rank)",
        modules_to_save=config["head"] or None, base_model_name_or_path=config["backbone"],
    )


def peft_twin(model: nn.Module, base: nn.Module) -> tuple[nn.Module, list[tuple[LoRALinear, nn.Module]]]:
    """PEFT's twin of ``model``: ``get_peft_model`` on a copy of ``base`` with :func:`peft_config` of
    ``model``, and every adapter's ``lora_A``, ``lora_B`` (and DoRA's magnitude) copied into PEFT's layer.

    ``base`` is the model before adapters were added (it is not changed). Returns the PEFT model and the
    pairs ``(our layer, PEFT's layer)``; their forward passes and gradients agree (notebook 03, section 4;
    ``tests/test_peft_equivalence.py``). The head is PEFT's copy of ``base``'s: train neither before comparing,
    or use :func:`export_peft` to carry a trained head.
    """
    from peft import get_peft_model

    config = peft_config(model)
    config.base_model_name_or_path = None  # get_peft_model records base's own (and warns if it differs)
    theirs = get_peft_model(copy.deepcopy(base), config)
    peft_layers = dict(theirs.base_model.model.named_modules())
    pairs = []
    with torch.no_grad():
        for name, layer in adapter_layers(model):
            target = peft_layers[name]
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
            if isinstance(layer, DoRALinear):
                target.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
            pairs.append((layer, target))
    return theirs, pairs


def export_peft(model: nn.Module, folder: str | Path) -> Path:
    """Write a folder that ``peft.PeftModel.from_pretrained(base, folder)`` loads (LoRA or DoRA).

    Adapter factors and DoRA magnitudes go under PEFT's key names; the other trainable modules
    (the classification head) become PEFT's ``modules_to_save`` (:func:`peft_config`). The old
    configuration is removed first and the new one written last (see the module docstring).
    """
    folder = Path(folder)
    adapted = {name for name, _ in adapter_layers(model)}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in trainable_tensors(model).items():
        module, _, leaf = name.rpartition(".")
        if module in adapted:
            key = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}[leaf]
            tensors[f"{PEFT_PREFIX}{module}.{key}"] = tensor
        else:
            tensors[PEFT_PREFIX + name] = tensor
    peft_dict = peft_config(model).to_dict()
    peft_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_dict.items()}
    paired = {field: peft_dict.get(field) for field in PAIRED_FIELDS}
    write_adapter_files(folder, PEFT_TENSORS_FILE, tensors, {"format": "pt", PAIR_KEY: json.dumps(paired)}, peft_dict)
    return folder


def _check_pair(config_path: Path, peft: Mapping[str, Any], tensors_path: Path, metadata: Mapping[str, str]) -> None:
    """Refuse a configuration that is not the one ``export_peft`` wrote with these tensors."""
    if PAIR_KEY not in metadata:
        return  # PEFT's own files and older exports record nothing to compare
    try:
        recorded = json.loads(metadata[PAIR_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{tensors_path} is corrupt: its record of the configuration is not JSON ({error})") from error

    def canonical(value: object) -> object:
        return sorted(value) if isinstance(value, list) else value

    for field, value in recorded.items():
        if canonical(peft.get(field)) != canonical(value):
            raise ValueError(f"{config_path} has {field}={_show(peft.get(field))} but {tensors_path.name} was "
                             f"exported with {field}={_show(value)}: the two files come from different exports "
                             "(an interrupted export, or files mixed by hand); export again")


def import_peft(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a PEFT LoRA/DoRA adapter folder into ``model``'s from-scratch layers.

    Raises:
        ValueError: a missing, unreadable or corrupt file, a configuration that does not belong with
            the tensors, an unsupported PEFT option, or a folder that does not fit the model's
            adapters (the differing setting or tensor named).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    tensors_path = folder / PEFT_TENSORS_FILE
    if not config_path.is_file():
        if tensors_path.is_file():
            raise ValueError(f"{config_path} does not exist beside {tensors_path.name}: an export was interrupted "
                             "before writing its configuration; export again")
        raise ValueError(f"{config_path} does not exist: not a PEFT adapter folder")
    try:
        peft = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    for field in ("peft_type", "r", "lora_alpha", "target_modules"):
        if field not in peft:
            raise ValueError(f"{config_path}: configuration field {field!r} is missing")
    if peft["peft_type"] != "LORA":
        raise ValueError(f"{config_path}: peft_type {peft['peft_type']!r} is not LORA")
    if peft.get("fan_in_fan_out") or peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise ValueError(f"{config_path}: fan_in_fan_out and per-module rank/alpha patterns are not supported")
    for option in UNSUPPORTED_PEFT_OPTIONS:
        if peft.get(option):
            raise ValueError(f"{config_path}: {option}={peft[option]!r} makes a merged weight that is not LoRA's or "
                             "DoRA's; it cannot be imported into these layers")
    refuse_base_changing_init(peft, str(config_path))
    if isinstance(peft["target_modules"], str):
        raise ValueError(f"{config_path}: target_modules is a regex ({peft['target_modules']!r}); list module names")
    config = {"method": "dora" if peft.get("use_dora") else "lora", "rank": peft["r"], "alpha": peft["lora_alpha"],
              "scaling_rule": "alpha/sqrt(rank)" if peft.get("use_rslora") else "alpha/rank",
              "head": peft.get("modules_to_save") or None,  # none listed: the model's own head (classification_head)
              "dropout": peft.get("lora_dropout", 0.0), "targets": peft["target_modules"]}
    raw, metadata = read_safetensors(tensors_path)
    _check_pair(config_path, peft, tensors_path, metadata)
    tensors = {}
    for key, tensor in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for peft_leaf, ours in ((".lora_A.weight", ".lora_A"), (".lora_B.weight", ".lora_B"),
                                (".lora_magnitude_vector.weight", ".magnitude"), (".lora_magnitude_vector", ".magnitude")):
            if name.endswith(peft_leaf):
                name = name[: -len(peft_leaf)] + ours
                break
        tensors[name] = tensor
    adapted = {name[: -len(".lora_A")] for name in tensors if name.endswith(".lora_A")}
    fit_and_copy(model, tensors_path, config, adapted, tensors,
                 lambda m: {n for n in trainable_tensors(m) if n.endswith((".lora_A", ".lora_B", ".magnitude"))})
    return model
