"""Would `torch.compile` make the course's training step cheaper? Eager against compiled, side by side.

The LoRA q,v training step of notebook 02 (batch 32 × 64 tokens, AdamW), eager and compiled with
``torch.compile`` (inductor, which fuses the elementwise work around the matrix multiplications:
dropout, GELU, layer norm, softmax), in fp32 and under bf16 autocast, interleaved (A B C D A B ...)
so that the machine's noise hits all alike. Prints the compile time and each median's ratio to eager
fp32. Compiling needs a C++ compiler; batches of another length compile again (the course's batches
vary in length, which this benchmark does not measure).

    python bench/compile_bench.py [--rounds 10] [--threads 1] [--force-bf16]

bf16 runs only where the hardware multiplies it (``lowrank.settings.bf16_is_fast``), or with ``--force-bf16``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path

import torch

import lowrank
from lowrank.settings import backbone_name
from lowrank.timing import interleaved_medians, matmul_gflops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from precision_bench import add_force_bf16, bf16_allowed, step_function  # noqa: E402
from step_bench import TARGETS, make_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    add_force_bf16(parser)
    args = parser.parse_args()
    precisions = ((None, "fp32"), (torch.bfloat16, "bf16")) if bf16_allowed(args.force_bf16) else ((None, "fp32"),)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer = lowrank.load_backbone(backbone_name())
    batch = make_batch(tokenizer, "cpu")
    lora = lowrank.add_adapters(model, TARGETS, method="lora", rank=8, alpha=16)
    steps = {}
    for dtype, name in precisions:
        steps[f"eager {name}"] = step_function(copy.deepcopy(lora), itertools.repeat(batch), dtype, None)
        compiled = torch.compile(copy.deepcopy(lora))
        steps[f"compiled {name}"] = step_function(compiled, itertools.repeat(batch), dtype, None)
        start = time.perf_counter()
        steps[f"compiled {name}"]()  # the first call compiles
        print(f"compiling the {name} step took {time.perf_counter() - start:.0f} s", flush=True)
    print(f"fp32 torch.mm 2048^3: {matmul_gflops():.0f} GFLOP/s on {args.threads} thread(s)", flush=True)
    medians = interleaved_medians(steps, rounds=args.rounds)
    base = medians["eager fp32"]
    for name, seconds in medians.items():
        print(f"{name:>14}: {seconds:.3f} s per step, {seconds / base:.2f}× eager fp32")


if __name__ == "__main__":
    main()
