"""Tokenise, batch, train with a progress bar, evaluate, and snapshot weights on the way.

Taught in notebook 02: sections 3-4 (a training loop written out, then :func:`train` doing the same in one call)
and section 6 (four ways to fine-tune with it); notebook 04, section 2, uses its weight snapshots; the practitioner
notebook A1 shows its speed knobs (length groups, the fused AdamW, bf16 autocast).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lowrank.timing import add_phase_seconds, phase, record_run, synchronize, timed_phase

if TYPE_CHECKING:  # annotations only: importing this module does not load datasets or transformers
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

Snapshot = Callable[[nn.Module], dict[str, torch.Tensor]]

PAPER_NO_DECAY = ("bias", "LayerNorm.weight")
"""The DoRA paper's official VL-BART code exempts parameters whose name contains one of these
from weight decay (``no_decay`` in its ``trainer_base.py``). Everything else decays, DoRA's
magnitude included, and so do layer norms whose name does not contain ``LayerNorm.weight``
(BART's ``self_attn_layer_norm``, DistilBERT's ``sa_layer_norm``)."""


def schedule_factor(step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier :func:`train` uses at optimizer step ``step`` (0-based) of
    ``total``: linear warm-up over ``warmup`` steps, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def parameter_groups(model: nn.Module, weight_decay: float, no_decay: Sequence[str] = ()) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: those whose name contains one of the
    ``no_decay`` substrings get weight decay 0, the rest ``weight_decay``."""
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (exempt if any(part in name for part in no_decay) else decayed).append(parameter)
    return [group for group in ({"params": decayed, "weight_decay": weight_decay},
                                {"params": exempt, "weight_decay": 0.0}) if group["params"]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@timed_phase("tokenize")
def tokenize(data: DatasetDict | Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 64):
    """Add ``input_ids`` and ``attention_mask`` columns to every split (truncated to ``max_length``, not padded).

    The ``attention_mask`` stored here is all ones, since nothing is padded yet. :func:`batches` (and so
    :func:`train`, :func:`predict`) does not read it: it pads each batch and rebuilds the mask from the
    lengths of ``input_ids``. The column is there for other consumers, such as the 🤗 ``Trainer``'s
    padding collator (notebook A3). ``text`` and ``label`` are kept.
    """

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    return data.map(encode, batched=True, desc="tokenizing")


def _collate(rows: list[dict], device: torch.device, pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.as_tensor(r["input_ids"])
        mask[i, :n] = 1
    labels = torch.as_tensor([r["label"] for r in rows])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def batch_order(lengths: Sequence[int], shuffle: bool, seed: int = 0) -> list[int]:
    """The row order :func:`batches` yields rows in: shuffled by ``seed``, or sorted by length (stable).

    The one place that decides it: :func:`predict` puts its logits back in the split's order with it.
    """
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed).shuffle(order)
    else:
        order.sort(key=lengths.__getitem__)
    return order


def batches(
    data: Dataset, batch_size: int, shuffle: bool, seed: int = 0, device: torch.device | str = "cpu", *,
    pad_token_id: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Dynamically padded batches (``input_ids``, ``attention_mask``, ``labels``).

    ``pad_token_id`` fills the padding: the tokenizer's ``pad_token_id`` (0 for BERT and DistilBERT,
    1 for RoBERTa). Models read it from ``input_ids`` (RoBERTa's positions, GPT-2's last token),
    so it must be the model's own. Unshuffled batches are sorted by length, which wastes less
    compute on padding.
    """
    rows = data.select_columns(["input_ids", "label"]).to_list()
    order = batch_order([len(row["input_ids"]) for row in rows], shuffle, seed)
    for start in range(0, len(order), batch_size):
        yield _collate([rows[i] for i in order[start:start + batch_size]], torch.device(device), pad_token_id)


CPU_MICRO_BATCH = 8
"""Rows per forward/backward pass that :func:`train` uses on a CPU (``micro_batch_size="auto"``).

A shuffled batch is padded to its longest row, and a CPU's time grows with the tokens it computes, padding
included; groups of rows of similar length, each cut to its own longest row, carry less padding. Smaller
groups lose more to per-pass overhead than padding costs, so there is a best size: 8 in fp32 on the course's
CPUs (measured by ``bench/micro_batch_bench.py``; the numbers are in docs/benchmarks.md). On a GPU the padding
is nearly free and small passes waste the device, so "auto" keeps whole batches.
"""

CPU_MICRO_BATCH_BF16 = 16
"""Rows per pass on a CPU under bf16 autocast (``micro_batch_size="auto"``): bf16's matrix multiplications
are faster, so per-pass overhead weighs more and the best group is larger (``bench/micro_batch_bench.py
--precision bf16``; numbers in docs/benchmarks.md)."""


def length_groups(
    batch: dict[str, torch.Tensor], size: int | None
) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """Split a right-padded batch into groups of at most ``size`` rows of similar length.

    Rows are sorted by length (``attention_mask``'s sum), cut into consecutive groups of ``size``,
    and each group is cut to its own longest row, so it carries less padding. Yields
    ``(group, share)``, ``share`` being the group's fraction of the batch's rows: for a loss that is a
    mean over rows (a sequence classifier's), the batch's mean loss is ``sum(share * group mean loss)``,
    so calling ``backward()`` on each weighted group loss
    accumulates the batch's gradient (equal up to float rounding; dropout draws other numbers, as
    its masks have other shapes). ``size=None``, or one at least the batch's, yields the batch itself.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"micro-batch size must be a positive integer or None, got {size!r}")
    rows = batch["attention_mask"].shape[0]
    if size is None or size >= rows:
        yield batch, 1.0
        return
    lengths = batch["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    width = batch["attention_mask"].shape[1]
    for start in range(0, rows, size):
        index = order[start:start + size]
        longest = int(lengths[index].max())
        group = {}
        for key, value in batch.items():
            value = value[index]
            group[key] = value[:, :longest] if value.dim() == 2 and value.shape[1] == width else value
        yield group, len(index) / rows


def resolve_micro_batch_size(micro_batch_size: int | None | str, device: torch.device,
                             autocast_dtype: torch.dtype | None = None) -> int | None:
    """``"auto"``: on a CPU :data:`CPU_MICRO_BATCH` (:data:`CPU_MICRO_BATCH_BF16` under bf16 autocast),
    ``None`` (whole batches) elsewhere; a positive integer or ``None`` unchanged; anything else is refused
    before any training starts."""
    if micro_batch_size == "auto":
        if device.type != "cpu":
            return None
        return CPU_MICRO_BATCH_BF16 if autocast_dtype == torch.bfloat16 else CPU_MICRO_BATCH
    if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int)
                                         or micro_batch_size < 1):
        raise ValueError(f"micro_batch_size must be 'auto', a positive integer or None, got {micro_batch_size!r}")
    return micro_batch_size


def adamw(model: nn.Module, lr: float, weight_decay: float, no_decay: Sequence[str] = ()) -> torch.optim.AdamW:
    """The optimiser :func:`train` uses by default: AdamW over the trainable parameters
    (:func:`parameter_groups`), fused into one kernel on CPU and CUDA (:func:`fused_adamw`)."""
    return fused_adamw(parameter_groups(model, weight_decay, no_decay), lr, model_device(model))


def fused_adamw(groups: Sequence[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over parameter ``groups`` (each may set its own ``lr`` and ``weight_decay``), fused on CPU and CUDA.

    The fused kernel computes the same update as the per-tensor loop, equal up to float rounding, and is
    faster (``bench/micro_batch_bench.py``; docs/benchmarks.md).
    """
    return torch.optim.AdamW(list(groups), lr=lr, fused=device.type in ("cpu", "cuda") or None)


def _optimizer_for(model: nn.Module, optimizer: torch.optim.Optimizer | Sequence[dict] | None, lr: float,
                   weight_decay: float, no_decay: Sequence[str]) -> torch.optim.Optimizer:
    """What :func:`train` steps: ``optimizer`` itself, AdamW over the parameter groups given, or the default
    :func:`adamw`. Refuses groups or an optimizer that leave out a trainable parameter: it would stay at its
    initial value while ``requires_grad`` says it trains."""
    if optimizer is None:
        return adamw(model, lr, weight_decay, no_decay)
    if not isinstance(optimizer, torch.optim.Optimizer):
        groups = [dict(group) for group in optimizer]
        for group in groups:
            group["params"] = list(group["params"])
            group.setdefault("weight_decay", weight_decay)
        optimizer = fused_adamw(groups, lr, model_device(model))
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    left_out = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in stepped]
    if left_out:
        raise ValueError(f"the optimizer's parameter groups leave out {len(left_out)} trainable parameter(s), first "
                         f"{left_out[0]!r}: add them to a group, or freeze them (requires_grad_(False))")
    return optimizer


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_pad_token_id(model: nn.Module, pad_token_id: int | None = None) -> int:
    """``pad_token_id`` if given, else the model's ``config.pad_token_id`` (set from its tokenizer's)."""
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad_token_id is None:
        raise ValueError(f"{type(model).__name__} has no config.pad_token_id: pass pad_token_id=tokenizer.pad_token_id "
                         "(and set model.config.pad_token_id to it, e.g. the eos id for GPT-2)")
    return int(pad_token_id)


CPU_EVAL_BATCH = 32
"""Rows per forward pass when :func:`predict` evaluates on a CPU (``batch_size=None``): the rows are sorted by
length, so smaller batches carry less padding, and in fp32 on a course CPU 32 rows ran 12 to 15 % faster than 128
(64 about the same as 32, 256 about 30 % slower; ``bench/eval_batch_bench.py``, docs/benchmarks.md). On a GPU,
where padding is nearly free, :data:`GPU_EVAL_BATCH`."""
GPU_EVAL_BATCH = 128


@timed_phase("evaluate")
@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int | None = None,
            pad_token_id: int | None = None) -> torch.Tensor:
    """Logits for every row of a tokenised split, in the split's order (padding: :func:`model_pad_token_id`).

    ``batch_size``: rows per forward pass; ``None``: :data:`CPU_EVAL_BATCH` on a CPU, :data:`GPU_EVAL_BATCH` on a GPU.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    if batch_size is None:
        batch_size = CPU_EVAL_BATCH if device.type == "cpu" else GPU_EVAL_BATCH
    order = batch_order([len(x) for x in data["input_ids"]], shuffle=False)  # the order batches() yields
    out: list[torch.Tensor] = []
    for batch in batches(data, batch_size, shuffle=False, device=device,
                         pad_token_id=model_pad_token_id(model, pad_token_id)):
        batch.pop("labels")
        out.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(out)
    restored = torch.empty_like(logits)
    restored[torch.as_tensor(order)] = logits
    return restored


def accuracy(model: nn.Module, data: Dataset, batch_size: int | None = None, pad_token_id: int | None = None) -> float:
    """Fraction of rows of a tokenised split whose argmax logit equals ``label``."""
    return logits_accuracy(predict(model, data, batch_size, pad_token_id), data)


def logits_accuracy(logits: torch.Tensor, data: Dataset) -> float:
    """Fraction of rows whose argmax of ``logits`` (from :func:`predict` on ``data``) equals ``label``:
    the accuracy of predictions already computed, without running the model again."""
    labels = torch.as_tensor(data["label"])
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits for a split of {labels.shape[0]} rows")
    return (logits.argmax(-1) == labels).float().mean().item()


@dataclass
class TrainResult:
    """What :func:`train` saw: losses, evaluations, snapshots and timing."""

    losses: list[float] = field(default_factory=list)
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False

    @property
    def seconds_per_step(self) -> float:
        """Median wall time of a training step, the first (warm-up) step excluded."""
        times = self.step_seconds[1:] or self.step_seconds
        return statistics.median(times) if times else math.nan


def train(
    model: nn.Module,
    train_data: Dataset,
    eval_data: Dataset | None = None,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    no_decay: Sequence[str] = (),
    warmup_fraction: float = 0.06,
    seed: int = 0,
    eval_every: int | None = None,
    snapshot_steps: Sequence[int] = (),
    snapshot: Snapshot | None = None,
    progress: bool = True,
    description: str = "training",
    pad_token_id: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    micro_batch_size: int | None | str = "auto",
    optimizer: torch.optim.Optimizer | Sequence[dict] | None = None,
) -> TrainResult:
    """Fine-tune the trainable parameters of ``model`` with AdamW and a linear schedule.

    Args:
        train_data / eval_data: tokenised splits (see :func:`tokenize`).
        epochs / max_steps: passes over ``train_data``; ``max_steps`` stops earlier.
        weight_decay / no_decay: AdamW's decoupled decay, applied to every trainable parameter
            except those whose name contains one of ``no_decay`` (e.g. :data:`PAPER_NO_DECAY`).
        eval_every: evaluate on ``eval_data`` every so many steps (and always at the end).
        snapshot_steps / snapshot: after each listed step (0 = before training),
            store ``snapshot(model)`` in ``result.snapshots[step]``.
        progress: show a tqdm bar with the running loss.
        pad_token_id: the padding id; default the model's ``config.pad_token_id`` (:func:`model_pad_token_id`).
        autocast_dtype: run the forward under ``torch.autocast`` in this dtype (e.g. ``torch.bfloat16``);
            ``None`` (the default): no autocast, the model's own dtype. The caller decides: a notebook passes
            ``setup.autocast_dtype`` (:func:`lowrank.settings.training_dtype`: ``$LOWRANK_PRECISION`` and the
            hardware), so that this function's precision never depends on a global. Weights, gradients,
            optimizer state and evaluation stay in the model's own dtype.
        micro_batch_size: run each batch's forward and backward in groups of this many rows of similar
            length (:func:`length_groups`), accumulating the batch's gradient before the one optimizer step;
            ``None``: the whole batch at once; ``"auto"``: :data:`CPU_MICRO_BATCH` on a CPU
            (:data:`CPU_MICRO_BATCH_BF16` under bf16 autocast), whole batches elsewhere. The batches, their
            order and the updates' maths are the same either way.
        optimizer: ``None``: AdamW with ``lr``, ``weight_decay`` and ``no_decay`` (:func:`adamw`); a list of
            parameter groups (dicts with ``params`` and, say, their own ``lr``): fused AdamW over them, e.g.
            LoRA+ (``B`` at 16 times ``A``'s learning rate); or an optimizer built by the caller. Every group's
            learning rate follows the schedule (warm-up, then linear decay), as a multiple of its own ``lr``.
            Groups that leave out a trainable parameter are refused.

    Side effects beyond the trained parameters:

    * the global random generators are reseeded: :func:`seed_everything` with ``seed`` (Python's
      ``random``, NumPy, torch) at the start, so dropout masks repeat run to run,
      and whatever the caller drew before no longer matters to what is drawn after;
    * the model is left in **eval** mode (also after Ctrl-C), whatever mode it came in.

    Ctrl-C (``KeyboardInterrupt``) stops training and is raised again, after the progress bar is closed
    and the model put in eval mode: the steps already taken stay in the model's weights, and a cell (or a
    script) that trains several runs stops at the first press instead of going on to the next run. What
    was done so far is on the exception, as ``error.train_result`` (a :class:`TrainResult` with
    ``interrupted`` set), for a caller that catches it.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if snapshot_steps and snapshot is None:
        raise ValueError("snapshot_steps given without a snapshot function")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: add adapters or unfreeze something")
    seed_everything(seed)
    steps_per_epoch = math.ceil(len(train_data) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    warmup = int(warmup_fraction * total)
    optimizer = _optimizer_for(model, optimizer, lr, weight_decay, no_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(s, total, warmup))
    device = model_device(model)
    if isinstance(autocast_dtype, str):
        raise TypeError(f"autocast_dtype must be a torch.dtype or None, got {autocast_dtype!r}: resolve the "
                        "course's precision where you call train, e.g. autocast_dtype=setup.autocast_dtype")
    pad = model_pad_token_id(model, pad_token_id)
    micro_batch_size = resolve_micro_batch_size(micro_batch_size, device, autocast_dtype)
    wanted = set(snapshot_steps)
    result = TrainResult()
    if 0 in wanted and snapshot is not None:
        with phase("snapshot"):
            result.snapshots[0] = snapshot(model)
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(total=total, desc=description, disable=not progress, leave=True, mininterval=2.0)
    try:
        for epoch in range(epochs):
            for batch in batches(train_data, batch_size, shuffle=True, seed=seed + epoch, device=device,
                                 pad_token_id=pad):
                if result.steps >= total:
                    break
                synchronize(device)
                start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss = 0.0
                for group, share in length_groups(batch, micro_batch_size):
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                        enabled=autocast_dtype is not None):
                        group_loss = model(**group).loss * share
                    group_loss.backward()
                    loss += group_loss.item()
                optimizer.step()
                schedule.step()
                synchronize(device)  # on a GPU, time the work, not the kernel launches
                result.step_seconds.append(time.perf_counter() - start)
                result.steps += 1
                result.losses.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{statistics.fmean(result.losses[-20:]):.3f}")
                if result.steps in wanted and snapshot is not None:
                    with phase("snapshot"):
                        result.snapshots[result.steps] = snapshot(model)
                if eval_data is not None and eval_every and result.steps % eval_every == 0 and result.steps < total:
                    result.evaluations.append((result.steps, accuracy(model, eval_data, pad_token_id=pad)))
                    model.train()
    except KeyboardInterrupt as error:  # raised again: a swallowed Ctrl-C would start the cell's next run
        result.interrupted = True
        error.train_result = result  # type: ignore[attr-defined]
        raise
    finally:
        bar.close()
        model.eval()
        add_phase_seconds("train steps", sum(result.step_seconds))
        record_run(description, result.steps, sum(result.step_seconds))
    if eval_data is not None:
        result.evaluations.append((result.steps, accuracy(model, eval_data, pad_token_id=pad)))
    return result
