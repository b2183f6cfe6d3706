"""Length-grouped micro-batches and the fused AdamW against whole batches and the per-tensor loop, side by side.

A shuffled batch of tweets is padded to its longest row. ``lowrank.train`` (on a CPU) runs each batch in
groups of ``CPU_MICRO_BATCH`` rows of similar length, each cut to its own longest row, and steps a fused
AdamW once per batch. This script times one training step of notebook 02's methods on the same real,
shuffled batches, with whole batches and with several group sizes, interleaved (A B C A B C ...) so
the machine's noise hits all alike, and prints each median's ratio to the whole batch. It also times
the optimizer step alone, fused against the loop, for full fine-tuning (the one method whose optimizer
step is large), and prints how much of a batch is padding.

    python bench/micro_batch_bench.py [--batch-size 32] [--sizes 16 8 4] [--rounds 12] [--threads 1] [--precision bf16]

``--precision bf16`` runs only where the hardware multiplies bf16 (``lowrank.settings.bf16_is_fast``), or with
``--force-bf16``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

import lowrank
from lowrank.settings import backbone_name, dataset_name
from lowrank.timing import interleaved_medians, matmul_gflops
from lowrank.training import batches, length_groups, parameter_groups, tokenize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_bench import METHODS, add_force_bf16, bf16_allowed, build, step_function  # noqa: E402


def padding_share(all_batches: list[dict], size: int | None) -> float:
    """Fraction of the computed tokens that are padding, over ``all_batches`` split by ``size``."""
    real = padded = 0
    for batch in all_batches:
        for group, _ in length_groups(batch, size):
            real += int(group["attention_mask"].sum())
            padded += group["attention_mask"].numel()
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 8, 4], help="group sizes to compare")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds per method")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="the forward's dtype in every contender (bf16: under autocast)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    add_force_bf16(parser)
    args = parser.parse_args()
    if args.precision == "bf16" and not bf16_allowed(args.force_bf16):
        raise SystemExit("--precision bf16 refused here; use the default fp32")
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    model, tokenizer = lowrank.load_backbone(backbone_name())
    data = tokenize(lowrank.load_sentiment(dataset_name(), train_size=8000), tokenizer)
    all_batches = list(batches(data["train"], args.batch_size, shuffle=True, seed=0,
                               pad_token_id=tokenizer.pad_token_id))
    print(f"{torch.get_num_threads()} thread(s), fp32 torch.mm {matmul_gflops():.0f} GFLOP/s, training in {args.precision}; "
          f"batch {args.batch_size}, {len(all_batches)} shuffled batches of the training split")
    sizes: list[int | None] = [None, *args.sizes]
    print("padding share of the computed tokens: " + ", ".join(
        f"{'whole' if s is None else s}: {padding_share(all_batches, s):.0%}" for s in sizes))
    for method in args.methods:
        candidate = build(model, METHODS[method]["targets"])
        copies = {s: candidate if s is None else build(model, METHODS[method]["targets"]) for s in sizes}
        for copy_ in copies.values():  # one start for all, so they do the same work
            copy_.load_state_dict(candidate.state_dict())
        functions = {f"{'whole' if s is None else s}": step_function(copies[s], itertools.cycle(all_batches), dtype, s)
                     for s in sizes}
        medians = interleaved_medians(functions, rounds=args.rounds)
        base = medians["whole"]
        print(f"{method:22s} " + "  ".join(f"{name}: {seconds:.3f} s ({seconds / base:.2f})"
                                           for name, seconds in medians.items()))
    full = build(model, "all")
    for parameter in full.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizers = {name: torch.optim.AdamW(parameter_groups(full, 0.01), lr=1e-6, **options)
                  for name, options in (("loop", {"foreach": False}), ("fused", {"fused": True}))}
    medians = interleaved_medians({name: opt.step for name, opt in optimizers.items()}, rounds=args.rounds)
    print(f"AdamW step, full fine-tuning ({sum(p.numel() for p in full.parameters()):,} parameters): "
          f"loop {medians['loop']:.3f} s, fused {medians['fused']:.3f} s ({medians['fused'] / medians['loop']:.2f})")


if __name__ == "__main__":
    main()
