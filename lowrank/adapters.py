"""Put adapters into a model, take them out again, and count what trains.

Taught in notebook 02, sections 4-5 (``add_adapters`` does in one call what section 2 does by hand; where
the adapters go: ``targets_from_toggles``, the trainable head) and section 7 (merging); notebook 01 counts parameters with it (section 4) and merges (section 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear, refuse_non_finite

Method = Literal["lora", "dora"]

#: Module names of the freshly initialised classification head of
#: ``DistilBertForSequenceClassification``. It is random at the start of fine-tuning, so it
#: must train in full: a frozen random projection would feed the classifier noise.
DISTILBERT_HEAD = ("pre_classifier", "classifier")

_ADAPTER_CLASSES: dict[str, type[LoRALinear]] = {"lora": LoRALinear, "dora": DoRALinear}


def targets_from_toggles(
    query: bool = True,
    key: bool = False,
    value: bool = True,
    projection: bool = False,
    mlp: bool = False,
    head: bool = False,
) -> list[str]:
    """Turn the seed article's DistilBERT switches into ``targets`` for :func:`add_adapters`.

    ``query/key/value/projection`` are the attention's ``q_lin/k_lin/v_lin/out_lin``;
    ``mlp`` is the feed-forward ``lin1`` and ``lin2``; ``head`` is ``pre_classifier`` and
    ``classifier`` (an adapter on a freshly initialised head keeps its random weights frozen,
    which is rarely what you want: see notebook 02).
    """
    targets: list[str] = []
    if query:
        targets.append("q_lin")
    if key:
        targets.append("k_lin")
    if value:
        targets.append("v_lin")
    if projection:
        targets.append("out_lin")
    if mlp:
        targets += ["lin1", "lin2"]
    if head:
        targets += list(DISTILBERT_HEAD)
    return targets


def linear_suffixes(model: nn.Module) -> list[str]:
    """The distinct last name parts of the ``nn.Linear`` modules (what ``targets`` can name)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Yield ``(qualified_name, layer)`` for every LoRA/DoRA layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def classification_head(model: nn.Module) -> list[str]:
    """Names of the freshly initialised head of a Hugging Face ``*ForSequenceClassification`` model.

    Such a model holds its pretrained backbone under ``model.base_model_prefix`` (``distilbert``,
    ``bert``, ``roberta``, ``transformer``, ``model``, ...); every other top-level module with
    parameters is the head: DistilBERT's ``pre_classifier`` and ``classifier``, BERT's and
    RoBERTa's ``classifier``, GPT-2's and Llama's ``score``. Other models have no head to find: ``[]``.
    """
    prefix = getattr(model, "base_model_prefix", "")
    if not type(model).__name__.endswith("ForSequenceClassification") or not hasattr(model, prefix):
        return []
    return [name for name, child in model.named_children()
            if name != prefix and next(child.parameters(), None) is not None]


def trained_head(model: nn.Module) -> list[str]:
    """The top-level modules that hold trainable parameters outside every adapter layer: the head that
    trains in full. The one notion of "the head" that a save records and PEFT's ``modules_to_save`` lists."""
    adapted = tuple(name + "." for name, _ in adapter_layers(model))
    return sorted({name.split(".")[0] for name, p in model.named_parameters()
                   if p.requires_grad and not name.startswith(adapted)})


def _resolve_head(model: nn.Module, head: Sequence[str] | None) -> list[nn.Module]:
    """The modules ``head`` names (``None``: :func:`classification_head`), refusing a name that matches nothing."""
    names = classification_head(model) if head is None else list(head)
    modules = dict(model.named_modules())
    missing = [name for name in names if not name or name not in modules]
    if missing:
        raise ValueError(
            f"head module(s) {', '.join(map(repr, missing))} not found in {type(model).__name__}; "
            f"its top-level modules are: {', '.join(name for name, _ in model.named_children()) or '(none)'}"
        )
    return [modules[name] for name in names]


def freeze_all_but_head(model: nn.Module, head: Sequence[str] | None = None) -> nn.Module:
    """Freeze every parameter except those of the head modules.

    ``head`` names modules of ``model`` (e.g. ``["classifier"]``); a name that matches nothing is
    refused with a ``ValueError``. ``None`` (the default) finds the head by what the model is:
    :func:`classification_head`. On its own this is the "head only" baseline (a linear probe).
    """
    modules = _resolve_head(model, head)
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    for _, layer in adapter_layers(model):  # an adapted head's base stays frozen: only its adapter trains
        layer.base.requires_grad_(False)
    return model


def add_adapters(
    model: nn.Module,
    targets: Sequence[str],
    method: Method = "lora",
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    trainable_head: Sequence[str] | None = None,
) -> nn.Module:
    """Replace each ``nn.Linear`` whose qualified name ends with a target by an adapter layer.

    Every parameter is frozen except the adapters' and the head's: ``trainable_head`` names the
    head modules, ``None`` finds them (:func:`classification_head`: for DistilBERT,
    ``pre_classifier`` and ``classifier``), ``()`` trains no head. Calling ``add_adapters`` again
    adds more adapters; those added before stay trainable. Modifies ``model`` in place and returns it.

    Raises:
        ValueError: an unknown ``method``, no targets, a target that matches nothing, a head
            module that does not exist, or bad ``rank``/``alpha``/``dropout``.
        TypeError: a target that names a module that is not an ``nn.Linear``, or a model
            that already has adapters there.
    """
    if method not in _ADAPTER_CLASSES:
        raise ValueError(f"method must be one of {sorted(_ADAPTER_CLASSES)}, got {method!r}")
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of names, not a string: use [{targets!r}]")
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer, e.g. ['q_lin', 'v_lin']")
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for target in targets:
        hits = [name for name in modules if name and _matches(name, target)]
        if not hits:
            raise ValueError(
                f"target {target!r} matches no module of {type(model).__name__}; "
                f"its nn.Linear layers end with: {', '.join(linear_suffixes(model)) or '(none)'}"
            )
        for name in hits:
            module = modules[name]
            if isinstance(module, LoRALinear):
                raise TypeError(f"{name!r} already has an adapter ({type(module).__name__}); merge or reload first")
            if not isinstance(module, nn.Linear):
                raise TypeError(
                    f"target {target!r} matches {name!r}, a {type(module).__name__}, not an nn.Linear; "
                    "name the linear layers inside it instead"
                )
            chosen.append(name)
    adapter_class = _ADAPTER_CLASSES[method]
    freeze_all_but_head(model, trainable_head)
    for _, layer in adapter_layers(model):  # adapters from an earlier call keep training
        for parameter in layer.adapter_parameters():
            parameter.requires_grad_(True)
    for name in dict.fromkeys(chosen):
        base = modules[name]
        assert isinstance(base, nn.Linear)
        _replace(model, name, adapter_class(base, rank=rank, alpha=alpha, dropout=dropout))
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base layer's weight, in place, and put the base layer back.

    The merged model computes the same function (in eval mode) with no extra cost per token.
    Nothing is created: no randomness is drawn, and the base layers keep their class and hooks.
    Every merged weight is checked for NaN/inf first; if one has any, a ``ValueError`` names the
    layers and nothing is merged. A single layer can be merged and unmerged (LoRA) with
    :meth:`~lowrank.lora.LoRALinear.merge` and :meth:`~lowrank.lora.LoRALinear.unmerge`.
    Modifies ``model`` in place and returns it.
    """
    layers = list(adapter_layers(model))
    with torch.no_grad():
        refuse_non_finite((name, layer.merged_weight()) for name, layer in layers)
    for name, layer in layers:
        _replace(model, name, layer.merge())
    return model


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts of a model."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} ({100 * self.fraction:.2f} %)"


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` once, even one that several modules share (tied weights).

    The one place that decides what "each parameter once" means: :func:`count_parameters` and
    :func:`lowrank.memory.training_step_memory` both count these.
    """
    return list({id(p): p for p in model.parameters()}.values())


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable (``requires_grad``) and total parameters, each tensor once (:func:`unique_parameters`)."""
    unique = unique_parameters(model)
    return ParameterCount(
        trainable=sum(p.numel() for p in unique if p.requires_grad),
        total=sum(p.numel() for p in unique),
    )
