"""bf16 autocast against fp32 for notebook 02's four methods, measured side by side in one run.

Step time: each method's training step in fp32 and under bf16 autocast, interleaved (A B A B ...)
so that the machine's noise hits both alike; the ratio is what to read. Each step takes the next of the
same shuffled batches and runs as ``lowrank.train`` runs it on a CPU (length groups: 8 rows in fp32, 16 under
bf16; fused AdamW), or on whole padded batches with ``--whole-batches``. Accuracy: each method
trained twice from the same start on the same data order, once per precision, with notebook 02's
learning rates and the profile's sizes (``LOWRANK_PROFILE``), then compared on the same test set
with McNemar's exact test (a paired test: same examples).

    python bench/precision_bench.py [--rounds 12] [--no-accuracy]
    python bench/precision_bench.py --no-timing --methods "LoRA all linear r=8" --seed 1 --out bench/precision_seed1.json

Prints a table and writes bench/precision_results.json with the machine's fp32 and bf16 matmul rates. On a CPU
without bf16 hardware (``lowrank.settings.bf16_is_fast``) it refuses to run unless given ``--force-bf16``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import torch

import lowrank
from lowrank.comparison import mcnemar
from lowrank.notebook import setup_notebook
from lowrank.settings import bf16_is_fast
from lowrank.timing import interleaved_medians, matmul_gflops
from lowrank.training import (CPU_MICRO_BATCH, batches, length_groups, parameter_groups, predict,
                              resolve_micro_batch_size, train)

ROOT = Path(__file__).resolve().parent.parent
ALL_LINEAR = ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]
METHODS = {  # notebook 02's four methods and learning rates
    "head only": dict(targets=None, lr=2e-3),
    "LoRA q,v r=8": dict(targets=["q_lin", "v_lin"], lr=2e-3),
    "LoRA all linear r=8": dict(targets=ALL_LINEAR, lr=2e-3),
    "full fine-tuning": dict(targets="all", lr=1e-4),
}


FORCE_BF16 = "--force-bf16"


def add_force_bf16(parser: argparse.ArgumentParser) -> None:
    """The flag that runs a bench's bf16 contenders on a CPU without bf16 hardware (``bf16_allowed``)."""
    parser.add_argument(FORCE_BF16, action="store_true",
                        help="run the bf16 contenders even where bf16 is emulated (tens of times slower than fp32)")


def bf16_allowed(force: bool, device: str = "cpu") -> bool:
    """Whether a bench runs its bf16 contenders: where ``bf16_is_fast(device)``, or when ``force``d. Says why not:
    on a CPU without bf16 hardware torch emulates bf16, so a bf16 contender takes tens of times fp32's time and
    measures only the emulation."""
    if bf16_is_fast(device) or force:
        return True
    print(f"bf16 skipped: {device} has no bf16 hardware (or LOWRANK_ASSUME_NO_BF16=1), so torch would emulate bf16, "
          f"tens of times slower than fp32, and measure only the emulation; {FORCE_BF16} runs it anyway", flush=True)
    return False


def build(model: torch.nn.Module, targets) -> torch.nn.Module:
    candidate = copy.deepcopy(model)
    if targets is None:
        lowrank.freeze_all_but_head(candidate)
    elif targets != "all":
        lowrank.add_adapters(candidate, targets, method="lora", rank=8, alpha=16)
    return candidate


def step_function(model: torch.nn.Module, batch_cycle: Iterator[dict], dtype: torch.dtype | None = None,
                  size: int | None = CPU_MICRO_BATCH):
    """One training step as ``lowrank.train`` takes it on a CPU: a fused AdamW step over the next batch, whose
    forward (under bf16 autocast if ``dtype``) and backward run in length groups of ``size`` (None: whole)."""
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-6, fused=True)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for group, share in length_groups(next(batch_cycle), size):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(**group).loss
            (loss * share).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds per method")
    parser.add_argument("--no-accuracy", action="store_true", help="time the steps only (no training runs)")
    parser.add_argument("--no-timing", action="store_true", help="train and compare only (no interleaved timing)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="which of notebook 02's methods (default: all four)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (0: notebook 02's runs)")
    parser.add_argument("--whole-batches", action="store_true",
                        help="time whole padded batches (default: length groups, as lowrank.train runs on a CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "precision_results.json", help="where the JSON goes")
    add_force_bf16(parser)
    args = parser.parse_args()
    if not bf16_allowed(args.force_bf16):
        raise SystemExit("nothing to compare: this bench times and trains bf16 against fp32")
    methods = {label: METHODS[label] for label in args.methods}
    setup = setup_notebook(load=True)
    profile, model, data = setup.profile, setup.model, setup.data
    if setup.device.type != "cpu":
        raise SystemExit("this bench compares CPU precisions; run it on a machine without CUDA or hide the GPU")
    rates = {"fp32": matmul_gflops(torch.float32, repeats=6), "bf16": matmul_gflops(torch.bfloat16, repeats=6)}
    print(f"torch.mm 2048^3 with {torch.get_num_threads()} thread(s): fp32 {rates['fp32']:,.0f} GFLOP/s, "
          f"bf16 {rates['bf16']:,.0f} GFLOP/s (hardware bf16: {bf16_is_fast('cpu')})")
    all_batches = list(batches(data["train"], profile.batch_size, shuffle=True, seed=0,
                               pad_token_id=setup.tokenizer.pad_token_id))
    sizes = {name: None if args.whole_batches else resolve_micro_batch_size("auto", setup.device, dtype)
             for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}  # as train: 8 rows in fp32, 16 in bf16
    print(f"each step: the next of the profile's shuffled batches of {profile.batch_size}, "
          + ("whole" if args.whole_batches else f"in length groups of {sizes['fp32']} (fp32) and {sizes['bf16']} (bf16)"))
    results: dict[str, dict] = {label: {} for label in methods}
    for label, spec in ({} if args.no_timing else methods).items():
        fp32_model, bf16_model = build(model, spec["targets"]), build(model, spec["targets"])
        medians = interleaved_medians({"fp32": step_function(fp32_model, itertools.cycle(all_batches), None,
                                                             sizes["fp32"]),
                                       "bf16": step_function(bf16_model, itertools.cycle(all_batches), torch.bfloat16,
                                                             sizes["bf16"])}, rounds=args.rounds)
        results[label].update({"fp32 s/step": medians["fp32"], "bf16 s/step": medians["bf16"],
                               "bf16/fp32 step": medians["bf16"] / medians["fp32"]})
        print(f"{label:>20}: step fp32 {medians['fp32']:.3f} s, bf16 {medians['bf16']:.3f} s, "
              f"ratio {results[label]['bf16/fp32 step']:.2f}", flush=True)
    if not args.no_accuracy:
        labels = torch.as_tensor(data["test"]["label"])
        for label, spec in methods.items():
            correct = {}
            start = build(model, spec["targets"])  # one draw of the adapters' A, shared by both precisions
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                candidate = copy.deepcopy(start)
                train(candidate, data["train"], epochs=profile.epochs, batch_size=profile.batch_size, lr=spec["lr"],
                      seed=args.seed, autocast_dtype=dtype, description=f"{label} {name}")
                correct[name] = (predict(candidate, data["test"]).argmax(-1) == labels).tolist()
                results[label][f"{name} test accuracy"] = sum(correct[name]) / len(correct[name])
            comparison = mcnemar(correct["fp32"], correct["bf16"])
            results[label]["McNemar p"] = comparison.p_value
            print(f"{label:>20}: test accuracy fp32 {results[label]['fp32 test accuracy']:.2%}, "
                  f"bf16 {results[label]['bf16 test accuracy']:.2%} ({comparison})", flush=True)
    out = args.out.resolve()
    out.write_text(json.dumps({"profile": profile.name, "threads": torch.get_num_threads(), "seed": args.seed,
                               "matmul_gflops": {k: round(v) for k, v in rates.items()}, "methods": results},
                              indent=1) + "\n")
    print(f"written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
