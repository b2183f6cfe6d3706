"""Keep and share adapters: safetensors save/load, and PEFT export/import.

Only the trainable tensors are written (adapter factors, DoRA magnitudes, the trained head),
never pickles: loading a file cannot run code. A save is one safetensors file whose metadata
holds the configuration, written to a temporary file and renamed into place, so a crash
mid-save leaves the previous save intact. ``adapter_config.json`` beside it is a readable copy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lowrank.adapters import add_adapters, adapter_layers
from lowrank.dora import DoRALinear

TENSORS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_TENSORS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
FORMAT = "lowrank-adapters/1"
REQUIRED_FIELDS = ("format", "method", "rank", "alpha", "dropout", "targets")


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temporary_path)`` then rename the result over ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n"))


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """Method, rank, alpha, dropout and targets shared by all adapter layers of ``model``."""
    layers = list(adapter_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA/DoRA layers: add adapters before saving them")
    settings = {(("dora" if isinstance(l, DoRALinear) else "lora"), l.rank, l.alpha, l.dropout_p) for _, l in layers}
    if len(settings) > 1:
        raise ValueError(f"adapter layers differ in (method, rank, alpha, dropout): {sorted(settings)}; "
                         "save supports one setting per model")
    method, rank, alpha, dropout = settings.pop()
    backbone = getattr(getattr(model, "config", None), "name_or_path", "") or "unknown"
    return {"format": FORMAT, "method": method, "rank": rank, "alpha": alpha, "dropout": dropout,
            "targets": [name for name, _ in layers], "backbone": str(backbone)}


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad``, by qualified name, detached and contiguous on the CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_adapters(model: nn.Module, folder: str | Path) -> Path:
    """Write the trainable tensors and the adapter configuration to ``folder``; return the file."""
    folder = Path(folder)
    config = adapter_config(model)
    tensors = trainable_tensors(model)
    target = folder / TENSORS_FILE
    _atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"lowrank": json.dumps(config)}))
    _write_json(folder / CONFIG_FILE, config)
    return target


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist: expected a folder written by save_adapters/export_peft")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is truncated or corrupt and cannot be read ({error})") from error


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path, required: set[str]) -> None:
    """Check every name and shape first, then copy; the model is untouched if anything mismatches."""
    parameters = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in parameters:
            raise ValueError(f"{source}: tensor {name!r} {tuple(tensor.shape)} has no counterpart in the model "
                             "(other targets, method or architecture?)")
        if parameters[name].shape != tensor.shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} in the file but "
                             f"{tuple(parameters[name].shape)} in the model (other backbone or rank?)")
    missing = sorted(required - set(tensors))
    if missing:
        raise ValueError(f"{source}: the file lacks {len(missing)} tensor(s) the model trains, first {missing[0]!r}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor.to(parameters[name].dtype))


def _ensure_adapters(model: nn.Module, config: Mapping[str, Any]) -> None:
    if not list(adapter_layers(model)):
        add_adapters(model, list(config["targets"]), method=config["method"], rank=int(config["rank"]),
                     alpha=float(config["alpha"]), dropout=float(config["dropout"]))


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a :func:`save_adapters` folder into ``model`` (adding the adapters if it has none)."""
    path = Path(folder) / TENSORS_FILE
    tensors, metadata = _read_tensors(path)
    if "lowrank" not in metadata:
        raise ValueError(f"{path} has no lowrank configuration in its metadata: not written by save_adapters")
    try:
        config = json.loads(metadata["lowrank"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the configuration in its metadata is not valid JSON ({error})") from error
    for field in REQUIRED_FIELDS:
        if field not in config:
            raise ValueError(f"{path}: configuration field {field!r} is missing")
    if config["format"] != FORMAT:
        raise ValueError(f"{path}: format {config['format']!r} is not {FORMAT!r}")
    _ensure_adapters(model, config)
    _copy_into(model, tensors, path, required=set(trainable_tensors(model)))
    return model


def export_peft(model: nn.Module, folder: str | Path) -> Path:
    """Write a folder that ``peft.PeftModel.from_pretrained(base, folder)`` loads (LoRA or DoRA).

    Adapter factors and DoRA magnitudes go under PEFT's key names; the other trainable modules
    (the classification head) become PEFT's ``modules_to_save``. ``target_modules`` lists the
    adapted modules explicitly: PEFT has no default target list for DistilBERT.
    """
    from peft import LoraConfig

    folder = Path(folder)
    config = adapter_config(model)
    adapted = {name for name, _ in adapter_layers(model)}
    tensors: dict[str, torch.Tensor] = {}
    head: set[str] = set()
    for name, tensor in trainable_tensors(model).items():
        module, _, leaf = name.rpartition(".")
        if module in adapted:
            key = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}[leaf]
            tensors[f"{PEFT_PREFIX}{module}.{key}"] = tensor
        else:
            head.add(name.split(".")[0])
            tensors[PEFT_PREFIX + name] = tensor
    peft_config = LoraConfig(
        r=config["rank"], lora_alpha=config["alpha"], lora_dropout=config["dropout"],
        target_modules=sorted(adapted), use_dora=config["method"] == "dora",
        modules_to_save=sorted(head) or None, base_model_name_or_path=config["backbone"],
    )
    peft_dict = peft_config.to_dict()
    peft_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_dict.items()}
    _atomic_write(folder / PEFT_TENSORS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_json(folder / CONFIG_FILE, peft_dict)
    return folder


def import_peft(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a PEFT LoRA/DoRA adapter folder into ``model``'s from-scratch layers."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
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
    if peft.get("use_rslora") or peft.get("fan_in_fan_out") or peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise ValueError(f"{config_path}: rsLoRA, fan_in_fan_out and per-module rank/alpha patterns are not supported")
    if isinstance(peft["target_modules"], str):
        raise ValueError(f"{config_path}: target_modules is a regex ({peft['target_modules']!r}); list module names")
    config = {"method": "dora" if peft.get("use_dora") else "lora", "rank": peft["r"], "alpha": peft["lora_alpha"],
              "dropout": peft.get("lora_dropout", 0.0), "targets": peft["target_modules"]}
    raw, _ = _read_tensors(folder / PEFT_TENSORS_FILE)
    tensors = {}
    for key, tensor in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for peft_leaf, ours in ((".lora_A.weight", ".lora_A"), (".lora_B.weight", ".lora_B"),
                                (".lora_magnitude_vector.weight", ".magnitude"), (".lora_magnitude_vector", ".magnitude")):
            if name.endswith(peft_leaf):
                name = name[: -len(peft_leaf)] + ours
                break
        tensors[name] = tensor
    _ensure_adapters(model, config)
    adapter_tensors = {n for n in trainable_tensors(model) if n.endswith((".lora_A", ".lora_B", ".magnitude"))}
    _copy_into(model, tensors, folder / PEFT_TENSORS_FILE, required=adapter_tensors)
    return model
