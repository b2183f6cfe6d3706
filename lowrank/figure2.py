"""The Figure-2 study: when does the ΔM-versus-ΔD slope turn negative?

Taught in notebook 05: section 2 (the study and the paper's settings), sections 3-10 (what it found).

The DoRA paper's Figure 2 reports a negative ΔM/ΔD correlation for full fine-tuning and DoRA
and a positive one for LoRA. This module trains FT, LoRA and DoRA (query and value) under
conditions that change one factor at a time — the size of the regime, weight decay and its dose,
whether DoRA's magnitude is decayed, LoRA's alpha, and a function-preserving rescale that reverses
which layers hold the large row norms (:func:`reverse_row_norms`) — and records, for every run, the
ΔM/ΔD points of every layer at twelve evenly spaced checkpoints, plus a first-order split of each
ΔM into what weight decay and what the gradient did. It then computes every reported correlation
with its layer-bootstrap interval, exact permutation p-value and leave-one-layer-out range
(:func:`robust_table`).

Run it once (Ctrl-C keeps finished runs, a re-run resumes; each run takes a few minutes on one core; ``--jobs 2``
trains two runs at a time, one per core, as ``make study`` does)::

    python -m lowrank.figure2 --out figures/ --jobs 2

It writes ``05_ablation_points.csv`` (columns ``condition, method, module, layer, step,
delta_m, delta_d``), ``05_ablation_mechanism.csv``, ``05_ablation_runs.json`` and ``05_robustness.csv``.

**Weight decay at the paper's strength.** AdamW's decoupled decay multiplies every decayed
parameter by ``(1 - lr_t·λ)`` at each step, so after training by ``c = Π(1 - lr_t·λ) ≈
exp(-λ·Σ lr_t)``. The paper's code (VL-Adapter's scripts for FT and LoRA, NVlabs/DoRA's for DoRA)
trains 20 epochs with λ = 0.01 and a linear schedule (mean multiplier 0.5) over roughly 1.2 to 2.2
million examples an epoch: FT (lr 1e-4, batch 500 per process) ``λ·Σlr ≈ 0.024 to 0.044``, LoRA
(lr 1e-3, batch 500 per process) 0.24 to 0.44, DoRA (lr 1e-3, batch 300 in all) 0.40 to 0.73. The
conditions use 0.03 for FT and 0.3 for the adapters (:data:`PAPER_CUMULATIVE_DECAY`), times a dose
(``Condition.decay_scale``; 2x is DoRA's batch-300 estimate), and set λ per run so that ``λ·Σ lr_t``
equals them over these much shorter runs: only the cumulative shrink ``c`` matches, each step's decay is
far stronger than the paper's. Not reproduced: AdamW ε = 1e-6 and gradient clipping at 5 (this study:
torch's ε = 1e-8, no clipping), and DoRA training biases and layer norms.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from lowrank.adapter_files.atomic import replace_file
from lowrank.magnitude_direction import (
    MagnitudeDirectionPoint,
    layer_index,
    magnitude_direction_points,
    merged_linear_weights,
)
from lowrank.settings import EMBEDDED
from lowrank.training import PAPER_NO_DECAY, schedule_factor

METHODS = ("FT", "LoRA", "DoRA")
TARGETS = ("q_lin", "v_lin")
PATTERN = r"\.(q_lin|v_lin)$"
CHECKPOINTS = 12  # evenly spaced snapshots per run; "even" and "late" placements choose 4 of them
WARMUP_FRACTION = 0.1  # the paper's warm-up
PAPER_CUMULATIVE_DECAY = {"FT": 0.03, "LoRA": 0.3, "DoRA": 0.3}  # λ·Σlr, see the module docstring
PAPER_LR = {"FT": 1e-4, "LoRA": 1e-3, "DoRA": 1e-3}
PAPER_RANK = PAPER_ALPHA = 128  # DoRA's r = α (the paper's Table 9); VL-Adapter's LoRA baseline used α = 32
POINTS_FILE = "05_ablation_points.csv"
MECHANISM_FILE = "05_ablation_mechanism.csv"
RUNS_FILE = "05_ablation_runs.json"
ROBUSTNESS_FILE = "05_robustness.csv"  # every reported correlation with interval, exact p, leave-one-out range
#: The study trains in fp32 whatever ``$LOWRANK_PRECISION`` says: its committed results are fp32, and it
#: changes one factor at a time, precision not among them.
STUDY_AUTOCAST = None


@dataclass(frozen=True)
class Regime:
    """How long and how fast: steps, batch size and the learning rate of each method."""

    name: str
    steps: int
    batch_size: int
    lr: Mapping[str, float]


@dataclass(frozen=True)
class Condition:
    """One setting of the study: a regime and a weight-decay rule.

    ``decay``: ``"none"``; ``"paper"`` (the official code's grouping, :data:`PAPER_NO_DECAY`,
    at the paper's cumulative strength); ``"paper_magnitude_exempt"`` (the same, DoRA's
    magnitude not decayed).
    """

    name: str
    regime: Regime
    decay: str
    methods: tuple[str, ...] = METHODS
    decay_scale: float = 1.0  # multiplies the paper's λ·Σlr (the dose–response conditions)
    swap: str = "none"  # "reverse": the function-preserving rescale of :func:`reverse_row_norms` before training
    lora_alpha: float = PAPER_ALPHA  # the adapters' alpha (scaling alpha / rank)


SHORT = Regime("short", steps=250, batch_size=16, lr=PAPER_LR)
LONG = Regime("long", steps=600, batch_size=16, lr={"FT": 3e-4, "LoRA": 1e-3, "DoRA": 1e-3})
QUICK = Regime("quick", steps=12, batch_size=16, lr={"FT": 1e-3, "LoRA": 1e-3, "DoRA": 1e-3})
SHORT_4X = Regime("short4x", steps=1000, batch_size=16, lr=PAPER_LR)
# Regime size one factor at a time (FT only): the short regime's learning rate 4x and 10x, steps unchanged.
SHORT_LR4X = Regime("short_lr4x", steps=250, batch_size=16, lr={"FT": 4e-4})
SHORT_LR10X = Regime("short_lr10x", steps=250, batch_size=16, lr={"FT": 1e-3})

CONDITIONS = (
    Condition("short_wd0", SHORT, "none"),
    Condition("short_wd_paper", SHORT, "paper"),
    Condition("long_wd0", LONG, "none"),
    Condition("long_wd_paper", LONG, "paper"),
    Condition("long_wd_paper_m_exempt", LONG, "paper_magnitude_exempt", methods=("DoRA",)),
    # Issue 24, in the order of what each tells: the causal norm swap (with decay, then its no-decay control),
    # the dose–response (2x is also DoRA's batch-300 estimate, see DORA_BATCH300_CUMULATIVE_DECAY),
    # LoRA at the alpha the paper's quoted baseline used.
    Condition("short_wd_paper_swap", SHORT, "paper", methods=("FT", "DoRA"), swap="reverse"),
    Condition("short_wd0_swap", SHORT, "none", methods=("FT", "DoRA"), swap="reverse"),
    Condition("short_wd_paper_x2", SHORT, "paper", methods=("FT", "DoRA"), decay_scale=2.0),
    Condition("short_wd_paper_alpha32", SHORT, "paper", methods=("LoRA",), lora_alpha=32),
    Condition("short_wd_paper_x0.5", SHORT, "paper", methods=("FT", "DoRA"), decay_scale=0.5),
    Condition("short_wd0_alpha32", SHORT, "none", methods=("LoRA",), lora_alpha=32),
    # Compression: the same λ·Σlr over 4x the steps (λ 4x smaller, so each step's decay pulls 4x less against Adam).
    Condition("short4x_wd_paper", SHORT_4X, "paper", methods=("DoRA", "FT")),
    Condition("short_wd_paper_x0.25", SHORT, "paper", methods=("FT", "DoRA"), decay_scale=0.25),
    # Regime size without decay, one factor at a time: 4x the steps alone, then the learning rate alone.
    Condition("short4x_wd0", SHORT_4X, "none", methods=("FT",)),
    Condition("short_lr4x_wd0", SHORT_LR4X, "none", methods=("FT",)),
    Condition("short_lr10x_wd0", SHORT_LR10X, "none", methods=("FT",)),
)
#: Defined but not yet run (``--only NAME`` runs them).
PENDING_CONDITIONS: tuple[Condition, ...] = ()
QUICK_CONDITIONS = (Condition("quick_wd_paper", QUICK, "paper", methods=("DoRA",)),)


@dataclass(frozen=True)
class MechanismRow:
    """First-order account of one matrix's mean row-norm change at one checkpoint.

    With the decayed part of the weight shrunk by ``c`` (1 where the decay does not touch the
    row norm: LoRA's frozen W0, an exempt magnitude), write each row as ``c·w0 + g``. Then
    ``‖c·w0 + g‖ − ‖w0‖ ≈ (c − 1)‖w0‖ + ⟨ŵ0, g⟩ + ‖g⊥‖²/(2c‖w0‖)`` and
    ``1 − cos ≈ ‖g⊥‖²/(2(c‖w0‖ + g∥)²)`` with ``g∥ = ⟨ŵ0, g⟩``; all columns are means over the matrix's rows.
    """

    condition: str
    method: str
    module: str
    layer: int | None
    step: int
    row_norm: float  # mean ‖w0‖
    decay_factor: float  # c
    dm_signed: float  # mean (‖w_t‖ − ‖w0‖), measured
    dm_decay: float  # mean (c − 1)‖w0‖
    dm_gradient: float  # mean ⟨ŵ0, g⟩
    dm_second_order: float  # mean ‖g⊥‖² / (2c‖w0‖)
    dd_measured: float
    dd_first_order: float


def cumulative_lr(lr: float, steps: int, warmup_fraction: float = WARMUP_FRACTION) -> list[float]:
    """``Σ lr`` after each step 1..steps of :func:`lowrank.training.train`'s schedule (index 0: 0)."""
    warmup = int(warmup_fraction * steps)
    out = [0.0]
    for step in range(steps):
        out.append(out[-1] + lr * schedule_factor(step, steps, warmup))
    return out


def decay_factors(lr: float, weight_decay: float, steps: int, warmup_fraction: float = WARMUP_FRACTION) -> list[float]:
    """``c_t = Π_{s<t} (1 − lr_s·λ)`` for t = 0..steps: what decoupled decay alone leaves of a weight."""
    warmup = int(warmup_fraction * steps)
    out = [1.0]
    for step in range(steps):
        out.append(out[-1] * (1 - lr * schedule_factor(step, steps, warmup) * weight_decay))
    return out


def decay_settings(condition: Condition, method: str) -> tuple[float, tuple[str, ...]]:
    """``(weight_decay, no_decay)`` for one run: λ set so that ``λ·Σlr`` is the paper's estimate."""
    if condition.decay == "none":
        return 0.0, ()
    if condition.decay not in ("paper", "paper_magnitude_exempt"):
        raise ValueError(f"unknown decay rule {condition.decay!r}")
    total_lr = cumulative_lr(condition.regime.lr[method], condition.regime.steps)[-1]
    no_decay = PAPER_NO_DECAY + (("magnitude",) if condition.decay == "paper_magnitude_exempt" else ())
    return condition.decay_scale * PAPER_CUMULATIVE_DECAY[method] / total_lr, no_decay


def row_norm_decay(condition: Condition, method: str) -> list[float]:
    """``c_t`` for the parameter that carries the row norms of the studied matrices.

    FT: the weight itself (decayed unless decay is off). DoRA: the magnitude (decayed under
    ``paper``, not under ``paper_magnitude_exempt``). LoRA: the frozen W0, never decayed (decay
    acts on A and B, i.e. on the update only).
    """
    steps = condition.regime.steps
    weight_decay, no_decay = decay_settings(condition, method)
    carrier = {"FT": "q_lin.weight", "DoRA": "magnitude"}.get(method)
    if carrier is None or weight_decay == 0 or any(part in carrier for part in no_decay):
        return [1.0] * (steps + 1)
    return decay_factors(condition.regime.lr[method], weight_decay, steps)


def mechanism_rows(
    condition: str,
    method: str,
    snapshots: Mapping[int, Mapping[str, torch.Tensor]],
    pretrained: Mapping[str, torch.Tensor],
    decay: Sequence[float],
) -> list[MechanismRow]:
    """The first-order split of :class:`MechanismRow` for every snapshotted matrix and step."""
    rows = []
    for step in sorted(snapshots):
        for module, weight in snapshots[step].items():
            w, w0 = weight.double(), pretrained[module].double()
            c = float(decay[step])
            norm0 = w0.norm(dim=1)
            unit0 = w0 / norm0[:, None]
            g = w - c * w0
            radial = (g * unit0).sum(1)
            perpendicular_sq = (g.square().sum(1) - radial.square()).clamp_min(0)
            along = c * norm0 + radial
            cosine = torch.nn.functional.cosine_similarity(w, w0, dim=1)
            rows.append(MechanismRow(
                condition, method, module, layer_index(module), step,
                row_norm=norm0.mean().item(),
                decay_factor=c,
                dm_signed=(w.norm(dim=1) - norm0).mean().item(),
                dm_decay=((c - 1) * norm0).mean().item(),
                dm_gradient=radial.mean().item(),
                dm_second_order=(perpendicular_sq / (2 * c * norm0)).mean().item(),
                dd_measured=(1 - cosine).mean().item(),
                dd_first_order=(perpendicular_sq / (2 * along.square())).mean().item(),
            ))
    return rows


def checkpoint_steps(total: int, count: int = CHECKPOINTS) -> list[int]:
    """``count`` evenly spaced steps ending at ``total``."""
    return sorted({max(1, round(total * k / count)) for k in range(1, count + 1)})


def placements(total: int) -> dict[str, list[int]]:
    """Which four of the twelve checkpoints a figure uses: evenly from the start, or late."""
    steps = checkpoint_steps(total)
    return {"even": [steps[2], steps[5], steps[8], steps[11]], "late": steps[-4:]}


@dataclass
class RunRecord:
    """What one (condition, method) run did, kept in ``05_ablation_runs.json``."""

    condition: str
    method: str
    regime: str
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    no_decay: list[str]
    cumulative_decay: float  # λ·Σlr
    row_norm_decay_factor: float  # c at the last step for the row-norm carrier
    test_accuracy: float
    seconds: float
    seconds_per_step: float
    decay_scale: float = 1.0
    swap: str = "none"
    lora_alpha: float = PAPER_ALPHA
    output_difference: float | None = None  # max |logit difference| to the pretrained model before training


def _attention_blocks(model) -> list:
    """The attention modules (those with ``q_lin``, ``k_lin``, ``v_lin``, ``out_lin``), in depth order."""
    blocks = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_lin", "k_lin", "v_lin", "out_lin"))]
    if not blocks:
        raise ValueError("no attention module with q_lin/k_lin/v_lin/out_lin (DistilBERT layout) found")
    return blocks


@torch.no_grad()
def reverse_row_norms(model) -> dict[str, list[float]]:
    """Rescale each layer's query and value rows so that their mean row norms run in reverse depth order,
    leaving what the network computes unchanged; modifies ``model`` in place and returns the scales.

    Layer ``l`` of ``L`` gets ``s_l = n_q[L−1−l] / n_q[l]`` (``n_q``: mean row norm of ``W_q``): ``W_q, b_q``
    times ``s_l`` and ``W_k, b_k`` times ``1/s_l`` leave every attention logit ``q·k`` as it was. Likewise
    ``t_l = n_v[L−1−l] / n_v[l]``: ``W_v, b_v`` times ``t_l`` and ``W_o`` (``out_lin.weight``, not its bias)
    times ``1/t_l`` leave the attention output ``softmax(·) V W_oᵀ + b_o`` as it was (attention weights sum
    over positions, so the bias of V passes through linearly).
    """
    blocks = _attention_blocks(model)
    query = [b.q_lin.weight.norm(dim=1).mean().item() for b in blocks]
    value = [b.v_lin.weight.norm(dim=1).mean().item() for b in blocks]
    scales = {"query": [q / p for q, p in zip(reversed(query), query)],
              "value": [v / p for v, p in zip(reversed(value), value)]}
    for block, s, t in zip(blocks, scales["query"], scales["value"]):
        block.q_lin.weight.mul_(s)
        block.k_lin.weight.div_(s)
        block.v_lin.weight.mul_(t)
        block.out_lin.weight.div_(t)
        for linear, factor in ((block.q_lin, s), (block.k_lin, 1 / s), (block.v_lin, t)):
            if linear.bias is not None:
                linear.bias.mul_(factor)
    return scales


@torch.no_grad()
def max_output_difference(model, other, data, examples: int = 64) -> float:
    """``max |logits(model) − logits(other)|`` on the first ``examples`` rows of ``data`` (both in eval mode)."""
    from lowrank.training import batches, model_pad_token_id

    subset = data.select(range(min(examples, len(data))))
    was = model.training, other.training
    model.eval(), other.eval()
    try:
        batch = next(iter(batches(subset, len(subset), shuffle=False, pad_token_id=model_pad_token_id(model))))
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return (model(**batch).logits - other(**batch).logits).abs().max().item()
    finally:
        model.train(was[0]), other.train(was[1])


#: Test accuracy below which a run counts as collapsed (about 0.5 on the balanced test set: one class for every
#: sentence): not a fine-tune, so notebook 05 leaves it out of its tallies.
COLLAPSED_ACCURACY = 0.6


def collapsed_to_chance(run: Mapping) -> bool:
    """Whether a run (a row of :data:`RUNS_FILE`) ended at chance accuracy, as a diverged run does."""
    return run["test_accuracy"] < COLLAPSED_ACCURACY


def run_one(condition: Condition, method: str, model, data, progress: bool = True):
    """Train one method under one condition; return its points, mechanism rows and record."""
    from lowrank.adapters import add_adapters
    from lowrank.training import accuracy, seed_everything, train

    regime = condition.regime
    weight_decay, no_decay = decay_settings(condition, method)
    candidate = copy.deepcopy(model)
    if condition.swap == "reverse":
        reverse_row_norms(candidate)
    elif condition.swap != "none":
        raise ValueError(f"unknown swap {condition.swap!r}")
    reference = copy.deepcopy(candidate)  # W0 of this run: the rescaled weights under a swap
    seed_everything(0)  # the adapters' initialisation is the same in every condition
    if method != "FT":
        add_adapters(candidate, list(TARGETS), method=method.lower(), rank=PAPER_RANK, alpha=condition.lora_alpha)
    output_difference = max_output_difference(model, candidate, data["test"])
    pretrained = merged_linear_weights(reference, PATTERN)
    del reference
    steps_wanted = checkpoint_steps(regime.steps)
    epochs = math.ceil(regime.steps * regime.batch_size / len(data["train"]))
    start = time.perf_counter()
    result = train(candidate, data["train"], epochs=epochs, max_steps=regime.steps, batch_size=regime.batch_size,
                   lr=regime.lr[method], weight_decay=weight_decay, no_decay=no_decay,
                   warmup_fraction=WARMUP_FRACTION, seed=0, snapshot_steps=steps_wanted,
                   snapshot=lambda m: merged_linear_weights(m, PATTERN), progress=progress,
                   description=f"{condition.name} {method}", autocast_dtype=STUDY_AUTOCAST)
    seconds = time.perf_counter() - start
    if result.interrupted:
        raise KeyboardInterrupt
    points = magnitude_direction_points(method, result.snapshots, pretrained)
    decay = row_norm_decay(condition, method)
    mechanism = mechanism_rows(condition.name, method, result.snapshots, pretrained, decay)
    record = RunRecord(condition.name, method, regime.name, regime.steps, regime.batch_size, regime.lr[method],
                       weight_decay, list(no_decay), weight_decay * cumulative_lr(regime.lr[method], regime.steps)[-1],
                       decay[-1], accuracy(candidate, data["test"]), seconds, result.seconds_per_step,
                       condition.decay_scale, condition.swap, condition.lora_alpha, output_difference)
    return points, mechanism, record


POINT_COLUMNS = ["condition"] + [f.name for f in fields(MagnitudeDirectionPoint)]
MECHANISM_COLUMNS = [f.name for f in fields(MechanismRow)]


def _write_atomically(path: Path, text: str) -> None:
    replace_file(path, lambda staged: staged.write_text(text))


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[dict]:
    """Rows of a study CSV with numbers parsed (``layer`` and ``step`` as int)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key in ("condition", "method", "module"):
                continue
            row[key] = None if value == "" else (int(value) if key in ("layer", "step") else float(value))
    return rows


def points_of(rows: Sequence[Mapping], condition: str, method: str,
              module_suffix: str) -> list[MagnitudeDirectionPoint]:
    """The points of one condition, method and matrix type (``"q_lin"``/``"v_lin"``)."""
    return [MagnitudeDirectionPoint(r["method"], r["module"], r["layer"], r["step"], r["delta_m"], r["delta_d"])
            for r in rows if r["condition"] == condition and r["method"] == method
            and r["module"].endswith(module_suffix)]


_WORKER: dict = {}


def _load_study_inputs(train_size: int, eval_size: int) -> tuple:
    from lowrank.backbone import load_backbone
    from lowrank.data import load_sentiment
    from lowrank.training import tokenize

    model, tokenizer = load_backbone(EMBEDDED)
    data = tokenize(load_sentiment(EMBEDDED, train_size=train_size, eval_size=eval_size, seed=0), tokenizer, 64)
    return model, data


def _start_worker(train_size: int, eval_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["inputs"] = _load_study_inputs(train_size, eval_size)


def _run_in_worker(condition: Condition, method: str):
    model, data = _WORKER["inputs"]
    return run_one(condition, method, model, data, progress=False)


def run_study(out: Path, conditions: Sequence[Condition] = CONDITIONS, train_size: int = 8000,
              eval_size: int = 1000, progress: bool = True, jobs: int = 1) -> dict[str, RunRecord]:
    """Run every (condition, method) not yet in ``out``, saving after each; return all records.

    Finished runs are skipped, so an interrupted study (Ctrl-C) resumes where it stopped. ``jobs`` > 1 trains that
    many runs at once, each in its own process on ``cores // jobs`` torch threads; this process alone writes the files,
    after each run finishes (the runs are seeded, so a run's result does not depend on ``jobs`` at one thread each).
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out.mkdir(parents=True, exist_ok=True)
    points_path, mechanism_path, runs_path = out / POINTS_FILE, out / MECHANISM_FILE, out / RUNS_FILE
    records = {key: RunRecord(**value) for key, value in
               (json.loads(runs_path.read_text()) if runs_path.exists() else {}).items()}
    point_rows = [{k: ("" if v is None else v) for k, v in r.items()} for r in read_csv(points_path)]
    mechanism = [{k: ("" if v is None else v) for k, v in r.items()} for r in read_csv(mechanism_path)]
    todo = [(c, m) for c in conditions for m in c.methods if f"{c.name}/{m}" not in records]
    if not todo:
        print(f"all {len(records)} runs already in {runs_path}")
        return records

    def save(condition: Condition, method: str, points, rows, record: RunRecord) -> None:
        nonlocal point_rows, mechanism
        point_rows = [r for r in point_rows if not (r["condition"] == condition.name and r["method"] == method)]
        point_rows += [{"condition": condition.name, **asdict(p)} for p in points]
        mechanism = [r for r in mechanism if not (r["condition"] == condition.name and r["method"] == method)]
        mechanism += [asdict(r) for r in rows]
        records[f"{condition.name}/{method}"] = record
        # Points first, the run record last: a run counts as done only once its rows are on disk.
        _write_atomically(points_path, _csv_text(POINT_COLUMNS, point_rows))
        _write_atomically(mechanism_path, _csv_text(MECHANISM_COLUMNS, mechanism))
        _write_atomically(runs_path, json.dumps({k: asdict(v) for k, v in records.items()}, indent=1) + "\n")
        print(f"{condition.name} {method}: {record.seconds:.0f} s, test accuracy {record.test_accuracy:.1%}, "
              f"c = {record.row_norm_decay_factor:.3f}", flush=True)

    bar = tqdm(total=len(todo), desc="study", disable=not progress)
    jobs = min(jobs, len(todo))
    try:
        if jobs == 1:
            model, data = _load_study_inputs(train_size, eval_size)
            for condition, method in todo:
                bar.set_postfix_str(f"{condition.name} {method}")
                save(condition, method, *run_one(condition, method, model, data, progress=progress))
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                     initargs=(train_size, eval_size, threads)) as pool:
                # At most `jobs` runs handed to the pool at a time: a Ctrl-C (which reaches every worker) then leaves
                # no queued run behind to start while the interrupted ones wind down.
                waiting = iter(todo)
                running = {pool.submit(_run_in_worker, c, m): (c, m) for c, m in itertools.islice(waiting, jobs)}
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        condition, method = running.pop(future)
                        save(condition, method, *future.result())
                        bar.update()
                        for c, m in itertools.islice(waiting, 1):
                            running[pool.submit(_run_in_worker, c, m)] = (c, m)
    except KeyboardInterrupt:
        print(f"interrupted: {len(records)} runs saved in {out}; run the same command again to resume")
        return records
    finally:
        bar.close()
    write_robustness(out)
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lowrank.figure2", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("figures"), help="folder for the CSVs and JSON")
    parser.add_argument("--only", nargs="+", help="run only these conditions (names as in the CSV)")
    parser.add_argument("--quick", action="store_true", help="a tiny version of one condition (seconds)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, each in its own process on cores/jobs threads (2 on a 2-core CPU)")
    parser.add_argument("--analyse", action="store_true",
                        help=f"only (re)write {ROBUSTNESS_FILE} from the points already in --out (no training)")
    args = parser.parse_args(argv)
    if args.analyse:
        print(f"wrote {write_robustness(args.out)}")
        return
    conditions = QUICK_CONDITIONS if args.quick else CONDITIONS
    if args.only:
        known = conditions + (() if args.quick else PENDING_CONDITIONS)
        unknown = sorted(set(args.only) - {c.name for c in known})
        if unknown:
            raise SystemExit(f"unknown condition(s) {unknown}; choose from {[c.name for c in known]}")
        conditions = tuple(c for name in args.only for c in known if c.name == name)
    run_study(args.out, conditions, jobs=args.jobs, **({"train_size": 512, "eval_size": 256} if args.quick else {}))



# --- Reading the study back (notebook 05) -------------------------------------------------

#: The paper's Figure 2 numbers (VL-BART query matrices). The paper names neither the statistic nor how the
#: four checkpoints enter it: a correlation over all 24 points is the natural reading, not a quote.
PAPER_CORRELATIONS = {"FT": -0.62, "LoRA": 0.83, "DoRA": -0.31}
#: The sign each method has in the paper's Figure 2: the one-sided alternative of :func:`layer_permutation_p`.
PAPER_SIGN = {"FT": -1, "LoRA": 1, "DoRA": -1}


def chosen_steps(rows: Sequence[Mapping], condition: str, placement: str) -> list[int]:
    """The checkpoints of ``placement`` for one condition: ``"even"``/``"late"`` (four of twelve), ``"last"``
    (the final one: one point per layer), ``"all"``."""
    steps = sorted({r["step"] for r in rows if r["condition"] == condition})
    if not steps:
        raise ValueError(f"no points of condition {condition!r}")
    if placement == "all":
        return steps
    if placement == "last":
        return steps[-1:]
    return placements(steps[-1])[placement]


def study_points(rows: Sequence[Mapping], condition: str, method: str, module_suffix: str,
                 placement: str = "even") -> list[MagnitudeDirectionPoint]:
    """One panel's points: a condition, a method, a matrix type, at the placement's checkpoints."""
    keep = set(chosen_steps(rows, condition, placement))
    return [p for p in points_of(rows, condition, method, module_suffix) if p.step in keep]


def correlation_table(rows: Sequence[Mapping], module_suffix: str = "q_lin", placement: str = "even",
                      samples: int = 2000) -> list[dict]:
    """Every condition × method × statistic (pooled, within checkpoints, per layer) × Pearson/Spearman,
    with 95 % intervals from resampling whole layers."""
    from lowrank.magnitude_direction import correlation_summary

    table = []
    for condition in dict.fromkeys(r["condition"] for r in rows):
        for method in METHODS:
            points = study_points(rows, condition, method, module_suffix, placement)
            if not points:
                continue
            for c in correlation_summary(points, samples=samples):
                table.append({"condition": condition, "method": method, "statistic": c.statistic, "kind": c.kind,
                              "value": c.value, "low": c.low, "high": c.high})
    return table


def plot_study(rows: Sequence[Mapping], conditions: Sequence[str], module_suffix: str = "q_lin",
               placement: str = "even", path: Path | None = None):
    """A grid of Figure-2 panels: one row per condition, one column per method."""
    import matplotlib.pyplot as plt

    from lowrank.magnitude_direction import plot_points

    fig, axes = plt.subplots(len(conditions), len(METHODS), figsize=(13, 3.6 * len(conditions)), squeeze=False)
    for row_axes, condition in zip(axes, conditions):
        handles = []  # per row: regimes differ in their checkpoint steps
        for ax, method in zip(row_axes, METHODS):
            points = study_points(rows, condition, method, module_suffix, placement)
            if points:
                _, handles = plot_points(points, ax=ax, title=f"{condition}: {method}")
            else:
                ax.set_axis_off()
        if handles:
            row_axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    fig.suptitle(f"{module_suffix}, {placement} checkpoints; r = Pearson over all of a panel's points (pooled)")
    fig.tight_layout(rect=(0, 0, 0.9, 0.98))
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# --- Robustness: how much six layers can say -------------------------------------------------

def _with_layers(points: Sequence[MagnitudeDirectionPoint], keep) -> list[MagnitudeDirectionPoint]:
    return [p for p in points if keep(p.layer)]


def layer_permutation_p(points: Sequence[MagnitudeDirectionPoint], statistic: str = "within checkpoints",
                        kind: str = "pearson", alternative: str = "less") -> float:
    """Exact permutation p-value of a panel statistic under "no tie between a layer's ΔD and its ΔM".

    Every permutation π of the layers (720 for six) pairs layer i's ΔD series with layer π(i)'s ΔM series,
    at every checkpoint alike, so a layer's own time course stays intact and only the pairing across layers is
    broken. ``alternative``: ``"less"`` (p = share of permutations with a statistic ≤ the observed one),
    ``"greater"``, or ``"two-sided"`` (|statistic| ≥ |observed|). The identity permutation is among them, so
    p ≥ 1/720.
    """
    import itertools

    from lowrank.magnitude_direction import STATISTICS

    layers = sorted({p.layer for p in points})
    steps = sorted({p.step for p in points})
    by_key = {(p.layer, p.step): p for p in points}
    if len(by_key) != len(points) or None in layers or len(points) != len(layers) * len(steps):
        raise ValueError("need exactly one point per (layer, step), with layer numbers")
    if (statistic, kind) not in (("pooled", "pearson"), ("within checkpoints", "pearson")):
        raise ValueError(f"the exact permutation test covers Pearson pooled/within checkpoints, not {statistic}/{kind}")
    dd = np.array([[by_key[(layer, step)].delta_d for step in steps] for layer in layers])
    dm = np.array([[by_key[(layer, step)].delta_m for step in steps] for layer in layers])
    if statistic == "within checkpoints":  # each checkpoint's mean over layers removed (a permutation keeps it)
        dd, dm = dd - dd.mean(0), dm - dm.mean(0)
    else:
        dd, dm = dd - dd.mean(), dm - dm.mean()
    order = np.array(list(itertools.permutations(range(len(layers)))))  # [L!, L]
    values = (dd[None] * dm[order]).sum((1, 2)) / np.sqrt((dd * dd).sum() * (dm * dm).sum())
    observed = STATISTICS[statistic](points, kind)
    if not np.isclose(values[0], observed, atol=1e-9):  # the identity comes first
        raise AssertionError(f"permutation statistic {values[0]} differs from {statistic} {observed}")
    values = np.asarray(values)
    tolerance = 1e-12
    if alternative == "less":
        return float(np.mean(values <= observed + tolerance))
    if alternative == "greater":
        return float(np.mean(values >= observed - tolerance))
    if alternative == "two-sided":
        return float(np.mean(np.abs(values) >= abs(observed) - tolerance))
    raise ValueError(f"alternative must be 'less', 'greater' or 'two-sided', got {alternative!r}")


def leave_one_layer_out(points: Sequence[MagnitudeDirectionPoint], statistic: str = "within checkpoints",
                        kind: str = "pearson") -> dict[int, float]:
    """The statistic recomputed with each layer left out in turn: ``{left-out layer: value}``."""
    from lowrank.magnitude_direction import STATISTICS

    layers = sorted({p.layer for p in points})
    return {layer: STATISTICS[statistic](_with_layers(points, lambda other: other != layer), kind)
            for layer in layers}


@dataclass(frozen=True)
class RobustCorrelation:
    """One reported correlation with everything a reader needs to weigh it."""

    condition: str
    method: str
    matrices: str  # "query" / "value"
    statistic: str  # "within checkpoints" (4 checkpoints, even placement) or "last checkpoint" (6 points)
    value: float
    low: float  # 95 % layer-bootstrap interval
    high: float
    p_paper_sign: float  # exact one-sided permutation p in the direction of the paper's sign for the method
    loo_low: float  # smallest and largest value with one layer left out
    loo_high: float
    loo_sign_flips: str  # the layers whose removal flips the sign ("" if none)
    layers: int  # the effective sample: the number of layers


ROBUST_STATISTICS = {"within checkpoints": ("even", "within checkpoints"), "last checkpoint": ("last", "pooled")}


def robust_correlation(rows: Sequence[Mapping], condition: str, method: str, module_suffix: str,
                       statistic: str = "within checkpoints", samples: int = 1000) -> RobustCorrelation:
    """Pearson of one panel with its layer-bootstrap interval, exact permutation p and leave-one-layer-out range.

    ``statistic``: ``"within checkpoints"`` (the four `even` checkpoints, each checkpoint's mean removed) or
    ``"last checkpoint"`` (the six layers at the final step; "pooled" over one checkpoint).
    """
    from lowrank.magnitude_direction import correlation_summary

    placement, name = ROBUST_STATISTICS[statistic]
    points = study_points(rows, condition, method, module_suffix, placement)
    if not points:
        raise ValueError(f"no points for {condition}/{method}/{module_suffix}")
    summary = next(c for c in correlation_summary(points, samples=samples)
                   if (c.statistic, c.kind) == (name, "pearson"))
    alternative = "less" if PAPER_SIGN[method] < 0 else "greater"
    loo = leave_one_layer_out(points, name)
    flips = [str(layer) for layer, value in loo.items() if np.sign(value) != np.sign(summary.value)]
    return RobustCorrelation(condition, method, "query" if module_suffix == "q_lin" else "value", statistic,
                             summary.value, summary.low, summary.high,
                             layer_permutation_p(points, name, "pearson", alternative),
                             min(loo.values()), max(loo.values()), ",".join(flips), len({p.layer for p in points}))


def robust_table(rows: Sequence[Mapping], conditions: Sequence[str] | None = None,
                 statistics: Sequence[str] = ("within checkpoints", "last checkpoint"),
                 samples: int = 1000) -> list[RobustCorrelation]:
    """:func:`robust_correlation` for every condition × method × query/value × statistic present in ``rows``."""
    conditions = conditions or list(dict.fromkeys(r["condition"] for r in rows))
    present = {(r["condition"], r["method"]) for r in rows}
    return [robust_correlation(rows, condition, method, suffix, statistic, samples)
            for condition in conditions for method in METHODS if (condition, method) in present
            for suffix in TARGETS for statistic in statistics]


def layer_profile(rows: Sequence[Mapping], mechanism: Sequence[Mapping], condition: str, method: str,
                  module_suffix: str) -> dict[str, list[float]]:
    """Per layer (in depth order) at the last checkpoint: mean row norm of W0, ΔM, ΔD, and ΔM's decay and
    gradient parts (``dm_decay``; ``dm_gradient + dm_second_order``: what the gradient steps did to the norms)."""
    last = chosen_steps(rows, condition, "last")[0]
    chosen = sorted((r for r in rows if (r["condition"], r["method"], r["step"]) == (condition, method, last)
                     and r["module"].endswith(module_suffix)), key=lambda r: r["layer"])
    split = {r["layer"]: r for r in mechanism if (r["condition"], r["method"], r["step"]) == (condition, method, last)
             and r["module"].endswith(module_suffix)}
    return {"layer": [r["layer"] for r in chosen], "row_norm": [split[r["layer"]]["row_norm"] for r in chosen],
            "delta_m": [r["delta_m"] for r in chosen], "delta_d": [r["delta_d"] for r in chosen],
            "dm_decay": [split[r["layer"]]["dm_decay"] for r in chosen],
            "dm_gradient": [split[r["layer"]]["dm_gradient"] + split[r["layer"]]["dm_second_order"] for r in chosen]}


def ranks(values: Sequence[float]) -> list[int]:
    """1 = largest: the rank of each value (for "which layer holds the largest ...")."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        out[i] = rank
    return out


def read_robustness(path: Path) -> list[RobustCorrelation]:
    """The rows of a :data:`ROBUSTNESS_FILE` (as written by :func:`write_robustness`)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    types = {f.name: f.type for f in fields(RobustCorrelation)}
    return [RobustCorrelation(**{k: (int(v) if types[k] == "int" else float(v) if types[k] == "float" else v)
                                 for k, v in row.items()}) for row in rows]


def write_robustness(out: Path, samples: int = 1000) -> Path:
    """Write :func:`robust_table` of every condition in ``out``'s points file to :data:`ROBUSTNESS_FILE`."""
    rows = read_csv(out / POINTS_FILE)
    table = robust_table(rows, samples=samples)
    path = out / ROBUSTNESS_FILE
    _write_atomically(path, _csv_text([f.name for f in fields(RobustCorrelation)], [asdict(r) for r in table]))
    return path


if __name__ == "__main__":
    main()
