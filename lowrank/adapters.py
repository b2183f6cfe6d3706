"""Put adapters into a model, take them out again, and count what trains."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear

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


def freeze_all_but_head(model: nn.Module, head: Sequence[str] = DISTILBERT_HEAD) -> nn.Module:
    """Freeze every parameter except those of the top-level modules named in ``head``.

    On its own this is the "head only" baseline (a linear probe with one hidden layer).
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in head:
        if hasattr(model, name):
            getattr(model, name).requires_grad_(True)
    return model


def add_adapters(
    model: nn.Module,
    targets: Sequence[str],
    method: Method = "lora",
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    trainable_head: Sequence[str] = DISTILBERT_HEAD,
) -> nn.Module:
    """Replace each ``nn.Linear`` whose qualified name ends with a target by an adapter layer.

    Every parameter is frozen except the adapters' and those of the modules named in
    ``trainable_head`` (top-level names; default: DistilBERT's freshly initialised
    classification head). Modifies ``model`` in place and returns it.

    Raises:
        ValueError: an unknown ``method``, no targets, a target that matches nothing, or
            bad ``rank``/``alpha``/``dropout``.
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
    for name in dict.fromkeys(chosen):
        base = modules[name]
        assert isinstance(base, nn.Linear)
        _replace(model, name, adapter_class(base, rank=rank, alpha=alpha, dropout=dropout))
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace every adapter layer by a plain ``nn.Linear`` holding its ``merged_weight()``.

    The merged model computes the same function (in eval mode) with no extra cost per token.
    Modifies ``model`` in place and returns it.
    """
    for name, layer in list(adapter_layers(model)):
        base = layer.base
        merged = nn.Linear(
            base.in_features, base.out_features, bias=base.bias is not None,
            device=base.weight.device, dtype=base.weight.dtype,
        )
        merged.weight.data.copy_(layer.merged_weight().detach())
        if base.bias is not None:
            merged.bias.data.copy_(base.bias.detach())
        merged.requires_grad_(False)
        _replace(model, name, merged)
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


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable (``requires_grad``) and total parameters, each tensor once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return ParameterCount(
        trainable=sum(p.numel() for p in unique if p.requires_grad),
        total=sum(p.numel() for p in unique),
    )
