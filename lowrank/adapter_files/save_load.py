"""Save the adapters of a model and load them back: ``save_adapters`` / ``load_adapters``.

Taught in notebook A2 (in_practice), "Save and reload". The file format is :mod:`lowrank.adapter_files.format`;
the crash-safe write, :mod:`lowrank.adapter_files.atomic`.

What a load refuses, and what it keeps:

* a file whose method, rank, alpha, scaling rule, dropout or targets differ from the adapters the model
  already has (the field and both values named); another backbone of another size, at the first tensor
  whose shape differs (the recorded backbone name is not compared);
* everything is checked before anything changes: a refused load leaves the model as it was, also when
  it had to add the file's adapters first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowrank.adapter_files.format import (
    DEFAULT_SCALING_RULE,
    FORMAT,
    REQUIRED_FIELDS,
    TENSORS_FILE,
    read_safetensors,
    scaling_of,
    scaling_rule,
    write_adapter_files,
)
from lowrank.adapters import _replace, add_adapters, adapter_layers, trained_head
from lowrank.dora import DoRALinear

# ---------------------------------------------------------------------------------------------
# Configurations, and the check that a file's settings are the model's

def adapter_config(model: nn.Module) -> dict[str, Any]:
    """Everything needed to rebuild the adapted model from its backbone: method, rank, alpha, scaling rule,
    dropout, targets and the head that trains in full (:func:`lowrank.adapters.trained_head`).

    Raises ``ValueError`` for layers that differ in these settings, or a ``scaling`` that no rule of
    :data:`~lowrank.adapter_files.format.SCALING_RULES` gives (a file could not rebuild it).
    """
    layers = list(adapter_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA/DoRA layers: add adapters before saving them")
    settings = {(("dora" if isinstance(l, DoRALinear) else "lora"), l.rank, l.alpha,
                 scaling_rule(l.rank, l.alpha, l.scaling), l.dropout_p) for _, l in layers}
    if len(settings) > 1:
        raise ValueError(f"adapter layers differ in (method, rank, alpha, scaling rule, dropout): {sorted(settings)}; "
                         "saving and loading support one setting per model")
    method, rank, alpha, rule, dropout = settings.pop()
    backbone = getattr(getattr(model, "config", None), "name_or_path", "") or "unknown"
    return {"format": FORMAT, "method": method, "rank": rank, "alpha": alpha, "scaling_rule": rule,
            "dropout": dropout, "targets": [name for name, _ in layers], "head": trained_head(model),
            "backbone": str(backbone)}


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _show_targets(names: Collection[str]) -> str:
    return f"{sorted({name.rsplit('.', 1)[-1] for name in names})} ({len(names)} modules)"


def _check_settings(model: nn.Module, source: Path, config: Mapping[str, Any], targets: Collection[str]) -> None:
    """Refuse a file whose method, rank, alpha, scaling rule, dropout or targets differ from the adapters
    ``model`` has."""
    ours = adapter_config(model)
    advice = ("load into a model without adapters to take the file's settings, or add adapters with the "
              "file's settings")
    for field, theirs in (("method", config["method"]), ("rank", int(config["rank"])),
                          ("alpha", float(config["alpha"])),
                          ("scaling_rule", config.get("scaling_rule", DEFAULT_SCALING_RULE)),
                          ("dropout", float(config["dropout"]))):
        if theirs != ours[field]:
            raise ValueError(f"{source}: the file has {field}={_show(theirs)} but the model's adapters have "
                             f"{field}={_show(ours[field])}; {advice}")
    mine, file = set(ours["targets"]), set(targets)
    if mine != file:
        first = min(file ^ mine)
        where = "the file" if first in file else "the model"
        raise ValueError(f"{source}: the file has targets={_show_targets(file)} but the model's adapters have "
                         f"targets={_show_targets(mine)} (first difference: {first!r}, adapted only in {where}); "
                         f"{advice}")


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad``, by qualified name, detached and contiguous on the CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


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


def fit_and_copy(model: nn.Module, source: Path, config: Mapping[str, Any], adapted: Collection[str],
                 tensors: Mapping[str, torch.Tensor], required: Callable[[nn.Module], set[str]]) -> None:
    """Load ``tensors`` into ``model``: into its adapters after checking their settings against ``config``,
    or, for a model without adapters, into the adapters ``config`` describes, added first.

    ``adapted`` names the modules the file adapts; ``required(model)`` the tensors the file must hold.
    A refused load leaves the model as it was: adapters added for it are taken out again and every
    ``requires_grad`` restored (the checks need the adapted model's names and shapes).
    """
    if list(adapter_layers(model)):
        _check_settings(model, source, config, adapted)
        _copy_into(model, tensors, source, required(model))
        return
    scaling = scaling_of(config)  # an unknown rule is refused before anything changes
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    add_adapters(model, list(config["targets"]), method=config["method"], rank=int(config["rank"]),
                 alpha=float(config["alpha"]), dropout=float(config["dropout"]), trainable_head=config.get("head"))
    added = list(adapter_layers(model))
    try:
        for _, layer in added:
            layer.scaling = scaling
        _copy_into(model, tensors, source, required(model))
    except BaseException:
        for name, layer in added:
            _replace(model, name, layer.base)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trainable[name])
        raise


# ---------------------------------------------------------------------------------------------
# The public functions

def save_adapters(model: nn.Module, folder: str | Path) -> Path:
    """Write the trainable tensors and the adapter configuration to ``folder``; return the file.

    The write is crash-safe (:mod:`lowrank.adapter_files.atomic`); it first removes what earlier killed
    saves of the same file left behind, with a warning. Refuses (``ValueError``) a model whose settings no
    file can record (:func:`adapter_config`).
    """
    folder = Path(folder)
    config = adapter_config(model)
    return write_adapter_files(folder, TENSORS_FILE, trainable_tensors(model), {"lowrank": json.dumps(config)}, config)


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a :func:`save_adapters` folder into ``model`` (adding the adapters if it has none).

    Raises:
        ValueError: a missing, truncated or corrupt file (digest mismatch, naming the tensor), or a
            file that does not fit the model's adapters (the differing setting or tensor named).
    """
    path = Path(folder) / TENSORS_FILE
    tensors, metadata = read_safetensors(path)
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
    fit_and_copy(model, path, config, config["targets"], tensors, lambda m: set(trainable_tensors(m)))
    return model

