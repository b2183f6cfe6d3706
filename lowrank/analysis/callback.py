"""Record ΔM/ΔD during a 🤗 Trainer run: :class:`MagnitudeDirectionCallback`.

Taught in notebook A3 (in_practice), "Figure 2 for your own checkpoints".

Every ``every`` optimizer steps it measures the matched weight matrices of the model being
trained against their pretrained values, with the same arithmetic as ``python -m lowrank.analyze``
(:mod:`lowrank.analysis.row_changes`), and at the end writes ``points.csv``, ``correlations.csv`` and the
figure. It understands three kinds of training:

* full fine-tuning: the pretrained weights of the matched modules are copied to the CPU once,
  when the Trainer is built (before any checkpoint is resumed);
* PEFT LoRA/DoRA (``get_peft_model``): the frozen base layer is the pretrained weight, and the
  update is taken from the active adapter's factors, never merged;
* ``lowrank`` adapters (``add_adapters``): likewise, from ``LoRALinear``/``DoRALinear``.

Under several processes (DDP through ``accelerate`` or ``torchrun``) every process holds the same
weights after each step, so only the main process measures and writes; the others do nothing and
wait for nothing. Sharded parameters (FSDP, DeepSpeed ZeRO-3) are refused: no process holds a
whole matrix.

Usage::

    trainer = Trainer(model, args, train_dataset=...,
                      callbacks=[MagnitudeDirectionCallback(modules=r"q_proj$", every=100, run="lora")])
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from lowrank.analysis.outputs import DEFAULT_MODULES, RunPoint, write_outputs
from lowrank.lora import LoRALinear
from lowrank.magnitude_direction import layer_index
from lowrank.analysis.row_changes import FactoredUpdate, FullUpdate, RowBlocks, TensorRows, Update, magnitude_direction_changes

_WRAPPERS = ("module.", "_orig_mod.", "base_model.model.")


@dataclass(frozen=True)
class LiveMatrix:
    """One matched matrix of a live model: its pretrained weight and how to read its update now."""

    base: RowBlocks
    update: Update
    transposed: bool


def canonical_name(name: str) -> str:
    """A module name without the wrappers of DDP, ``torch.compile`` and PEFT (as in the base checkpoint)."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _is_peft_lora(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and hasattr(module, "base_layer")


def _peft_update(name: str, module: nn.Module) -> tuple[torch.Tensor, Update, bool]:
    active = [a for a in getattr(module, "active_adapters", []) if a in module.lora_A]
    if len(active) != 1:
        raise ValueError(f"{name}: {len(active)} active LoRA adapters ({active}); the analysis needs exactly one")
    adapter = active[0]
    magnitudes = getattr(module, "lora_magnitude_vector", {})
    magnitude = magnitudes[adapter].weight if adapter in magnitudes else None
    update = FactoredUpdate(module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                            float(module.scaling[adapter]), magnitude)
    return module.get_base_layer().weight, update, bool(getattr(module, "fan_in_fan_out", False))


def _matched(model: nn.Module, pattern: str) -> Iterator[tuple[str, nn.Module]]:
    """``(canonical name, module)`` of matched adapter layers and 2-D weights outside adapter layers."""
    regex = re.compile(pattern)
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        adapter = isinstance(module, LoRALinear) or _is_peft_lora(module)
        if adapter:
            inside.append(name)
        weight = getattr(module, "weight", None)
        plain = isinstance(weight, torch.Tensor) and (weight.dim() == 2 or hasattr(weight, "ds_numel"))
        if (adapter or plain) and regex.search(canonical_name(name)):
            yield canonical_name(name), module


def live_matrices(model: nn.Module, pattern: str, references: dict[str, torch.Tensor]) -> dict[str, LiveMatrix]:
    """The matched matrices of ``model``; plain (fully trained) ones are compared with ``references``."""
    out = {}
    for name, module in _matched(model, pattern):
        if isinstance(module, LoRALinear):
            magnitude = getattr(module, "magnitude", None)
            out[name] = LiveMatrix(TensorRows(module.base.weight),
                                   FactoredUpdate(module.lora_A, module.lora_B, module.scaling, magnitude), False)
        elif _is_peft_lora(module):
            weight, update, transposed = _peft_update(name, module)
            out[name] = LiveMatrix(TensorRows(weight), update, transposed)
        else:
            if name not in references:
                raise ValueError(f"{name} has no recorded pretrained weight (was the callback created after "
                                 "training started?)")
            transposed = type(module).__name__ == "Conv1D"  # GPT-2 style [in, out] storage
            out[name] = LiveMatrix(TensorRows(references[name]), FullUpdate(TensorRows(module.weight)), transposed)
    return out


def pretrained_copies(model: nn.Module, pattern: str) -> dict[str, torch.Tensor]:
    """CPU copies of the matched weights that train in full (adapter layers keep their own frozen base).

    Raises ``ValueError`` if nothing matches, if a matched plain weight is frozen (it would show no
    change), or if weights are sharded across processes.
    """
    copies = {}
    matched = list(_matched(model, pattern))
    if not matched:
        suffixes = sorted({canonical_name(n).rsplit(".", 1)[-1] for n, m in model.named_modules()
                           if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2})
        raise ValueError(f"modules {pattern!r} match no weight matrix of the model; its matrices' modules end with: "
                         + ", ".join(suffixes))
    frozen = []
    for name, module in matched:
        if isinstance(module, LoRALinear) or _is_peft_lora(module):
            continue
        weight = module.weight
        if hasattr(weight, "ds_numel") or weight.numel() == 0 or type(weight).__name__ == "DTensor":
            raise ValueError(f"{name}: the weight is sharded across processes (FSDP or DeepSpeed ZeRO-3); "
                             "analyse the saved checkpoints with python -m lowrank.analyze instead")
        if not weight.requires_grad:
            frozen.append(name)
        copies[name] = weight.detach().to("cpu", copy=True)
    if frozen:
        raise ValueError(f"modules {pattern!r} match {len(frozen)} frozen weight(s), first {frozen[0]!r}: they do not "
                         "train, so they would show no change; narrow the pattern to the trained or adapted modules")
    return copies


def measure(model: nn.Module, pattern: str, references: dict[str, torch.Tensor], step: int,
            run: str) -> list[RunPoint]:
    """ΔM/ΔD of every matched matrix of ``model`` now, as points of ``run`` at ``step``."""
    points = []
    with torch.no_grad():
        for name, matrix in live_matrices(model, pattern, references).items():
            ((delta_m, delta_d),) = magnitude_direction_changes(matrix.base, [matrix.update], matrix.transposed)
            points.append(RunPoint(run, matrix.update.method, name, layer_index(name), step, delta_m, delta_d))
    return points


class MagnitudeDirectionCallback(TrainerCallback):
    """Measure ΔM/ΔD of the matched matrices every ``every`` steps; write CSV and figure when training ends.

    Args:
        modules: regular expression searched in module names (PEFT's ``base_model.model.`` left out).
        every: measure after every ``every``-th optimizer step (and after the last one).
        run: the run's name in the CSV and on the figure.
        out: output folder; default ``<output_dir>/magnitude_direction``.
        formats: figure formats.
        bootstrap: bootstrap samples for the correlation intervals.
        verbose: print the correlation table at the end.

    After training, ``callback.points`` holds the measurements (on the main process; empty elsewhere).
    """

    def __init__(self, modules: str = DEFAULT_MODULES, every: int = 50, run: str = "run",
                 out: str | Path | None = None, formats: Sequence[str] = ("png", "pdf"), bootstrap: int = 2000,
                 verbose: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        re.compile(modules)
        self.modules, self.every, self.run, self.out = modules, every, run, out
        self.formats, self.bootstrap, self.verbose = tuple(formats), bootstrap, verbose
        self.points: list[RunPoint] = []
        self.written: list[Path] = []
        self._references: dict[str, torch.Tensor] | None = None

    def _capture(self, model: nn.Module | None) -> None:
        if self._references is None and model is not None:
            self._references = pretrained_copies(model, self.modules)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self._capture(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self._references is None and state.global_step > 0:
            raise ValueError("MagnitudeDirectionCallback was added after the pretrained weights were overwritten "
                             "(resumed run): pass it to Trainer(callbacks=[...]) so it sees the model first")
        self._capture(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self._record(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if not self.points or self.points[-1].step != state.global_step:
            self._record(model, state.global_step)
        out = Path(self.out) if self.out is not None else Path(args.output_dir) / "magnitude_direction"
        self.written, report = write_outputs(self.points, out, self.formats, self.bootstrap)
        if self.verbose:
            print(f"ΔM/ΔD of {len({p.module for p in self.points})} matrices at {len({p.step for p in self.points})} "
                  f"steps\n{report}\nwrote " + ", ".join(str(p) for p in self.written))

    def _record(self, model: nn.Module | None, step: int) -> None:
        if model is None:
            raise ValueError("the Trainer passed no model to the callback")
        self._capture(model)
        assert self._references is not None
        self.points += measure(model, self.modules, self._references, step, self.run)
