"""How many rows per forward pass evaluation should use on this machine, measured side by side.

``lowrank.training.predict`` sorts a split's rows by length and pads each batch to its own longest row, so a
smaller batch carries less padding but pays more per-pass overhead. This script times ``predict`` on the same
tokenised test split at several batch sizes, interleaved (A B C A B C ...) so the machine's noise hits all alike,
and prints each median's ratio to the default (``CPU_EVAL_BATCH`` on a CPU). Evaluation runs in the model's own
dtype (fp32): ``train`` evaluates without mixed precision.

    python bench/eval_batch_bench.py [--rows 1000] [--sizes 8 16 32 64 128 256] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from lowrank.backbone import load_backbone
from lowrank.data import load_sentiment
from lowrank.settings import backbone_name, dataset_name
from lowrank.timing import interleaved_medians, matmul_gflops
from lowrank.training import CPU_EVAL_BATCH, predict, tokenize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="test rows evaluated per call (the full profile's 1,000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the course runs one per notebook)")
    args = parser.parse_args()
    if any(size < 1 for size in args.sizes) or args.rows < 1 or args.rounds < 1:
        parser.error("--rows, --rounds and every --sizes value must be at least 1")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_backbone(backbone_name())
    data = tokenize(load_sentiment(dataset_name(), train_size=64, eval_size=args.rows, seed=0), tokenizer, 64)
    test = data["test"]
    model.eval()
    sizes = sorted(set(args.sizes) | {CPU_EVAL_BATCH})
    with torch.no_grad():
        medians = interleaved_medians({str(size): (lambda size=size: predict(model, test, batch_size=size))
                                       for size in sizes}, rounds=args.rounds)
    print(f"predict on {len(test)} test rows, {args.threads} thread(s); fp32 torch.mm "
          f"{matmul_gflops(torch.float32):.0f} GFLOP/s")
    base = medians[str(CPU_EVAL_BATCH)]
    for size in sizes:
        mark = "  (CPU_EVAL_BATCH)" if size == CPU_EVAL_BATCH else ""
        print(f"batch {size:>4}: {medians[str(size)]:6.2f} s  x{medians[str(size)] / base:.2f} of batch {CPU_EVAL_BATCH}{mark}")


if __name__ == "__main__":
    main()
