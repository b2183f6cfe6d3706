"""Side-by-side benchmark of the from-scratch layers against PEFT, in one process.

Contenders are interleaved (A B C ... A B C ...) so that the machine's noise hits all of them
alike; the script prints medians and, above all, ratios. Results go to bench/results.json and
figures/bench.png.

    make bench                       # or: python bench/step_bench.py --rounds 30 (the default)
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

import lowrank
from lowrank.memory import MIB, training_step_memory
from lowrank.adapter_files.peft_interop import peft_twin
from lowrank.settings import backbone_name, default_device
from lowrank.timing import interleaved_medians, no_grad_forward

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_lin", "v_lin"]
RANK = 8
PHASES = ("forward", "backward", "optimizer")


def make_batch(tokenizer, device, batch_size=32, length=64):
    texts = ["a sentence long enough to fill the whole sequence " * 12] * batch_size
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["labels"] = torch.arange(batch_size, device=device) % 2
    return batch


def contenders(model):
    def ours(method):
        return lowrank.add_adapters(copy.deepcopy(model), TARGETS, method=method, rank=RANK, alpha=16)

    lora, dora = ours("lora"), ours("dora")
    full = copy.deepcopy(model).requires_grad_(True)
    return {"lowrank LoRA": lora, "PEFT LoRA": peft_twin(lora, model)[0], "lowrank DoRA": dora,
            "PEFT DoRA": peft_twin(dora, model)[0], "full FT": full}


def training_step(model, batch):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()

    def step():
        with record_function("forward"):
            loss = model(**batch).loss
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def _phase(event) -> str:
    """The step phase (record_function above) an operator ran in; autograd's GPU threads have none: backward."""
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return "backward"


def _category(event, phase: str) -> str:
    name = event.name
    if phase == "optimizer":
        return "optimizer (AdamW, zero_grad)"
    if name in PHASES or name.startswith(("autograd::", "Optimizer.")):
        return "outside operators (Python, modules, autograd engine)"
    if name in ("aten::mm", "aten::addmm"):  # LoRA's thin matmuls have the rank as a dimension
        if any(RANK in shape for shape in event.input_shapes if len(shape) == 2):
            return "LoRA branch matmuls"
        return "frozen and head matmuls (linear layers, FFN)"
    if any(part in name for part in ("bmm", "softmax", "scaled_dot_product")):
        return "attention (bmm, softmax)"
    return "elementwise and the rest (add, mul, copy, layer norm, GELU, dropout, embedding)"


def profile_step(model, batch, steps: int = 3) -> tuple[dict[str, tuple[float, float]], list[tuple[str, float]]]:
    """Where one training step's time goes: ``{category: (seconds, GFLOP)}`` per step, and the top operators.

    Self time of each operator (device time on a GPU), grouped by what it does; the thin matmuls
    with the adapter rank as a dimension are the LoRA branch. The FLOPs (matmuls only) show how
    fast each kind of matmul ran inside the step.
    """
    step = training_step(model, batch)
    step()
    cuda = next(model.parameters()).is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True, with_flops=True) as profiler:
        for _ in range(steps):
            step()
    seconds: dict[str, float] = defaultdict(float)
    flops: dict[str, float] = defaultdict(float)
    by_operator: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        time = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6 / steps
        category = _category(event, _phase(event))
        seconds[category] += time
        flops[category] += (event.flops or 0) / 1e9 / steps
        if not category.startswith("outside"):
            shapes = "x".join(str(list(shape)) for shape in event.input_shapes if shape)
            by_operator[f"{event.name} {shapes}"] += time
    top = sorted(by_operator.items(), key=lambda item: -item[1])[:8]
    return {name: (seconds[name], flops[name]) for name in sorted(seconds, key=lambda name: -seconds[name])}, top


def step_flops(model, batch) -> int:
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_rate(device, size=2048, rounds=10) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = interleaved_medians({"mm": lambda: torch.mm(a, b)}, rounds)["mm"]
    return 2 * size**3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per measurement")
    args = parser.parse_args()
    device = default_device()
    torch.manual_seed(0)
    model, tokenizer = lowrank.load_backbone(backbone_name())
    model = model.to(device)
    batch = make_batch(tokenizer, device)
    models = contenders(model)
    print(f"device {device}, {torch.get_num_threads()} threads, batch 32x64, q,v adapters r=8, {args.rounds} rounds")

    steps = interleaved_medians({name: training_step(m, batch) for name, m in models.items()}, args.rounds)
    print("\ntraining step (forward + backward + AdamW), median seconds:")
    for name, seconds in steps.items():
        print(f"  {name:>13}: {seconds:.3f}")

    memory = {name: training_step_memory(m, batch) for name, m in models.items()}
    no_detach = lowrank.add_adapters(copy.deepcopy(model), TARGETS, method="dora", rank=RANK, alpha=16)
    for _, layer in lowrank.adapter_layers(no_detach):
        layer.detach_norm = False
    memory["lowrank DoRA, norm not detached"] = training_step_memory(no_detach, batch)
    print("\nmemory of one training step beyond the weights (activations + grads + AdamW), MiB:")
    for name, m in memory.items():
        print(f"  {name:>31}: {m.training_extra / MIB:7.1f}" + (f"  (CUDA peak {m.cuda_peak / MIB:.0f})" if m.cuda_peak else ""))

    base = copy.deepcopy(model).eval()
    lora = models["lowrank LoRA"].eval()
    dora = models["lowrank DoRA"].eval()
    with torch.no_grad():
        for _, layer in list(lowrank.adapter_layers(lora)) + list(lowrank.adapter_layers(dora)):
            layer.lora_B.normal_(std=0.01)
    merged = lowrank.merge_adapters(copy.deepcopy(lora)).eval()
    inference_batch = {k: v for k, v in batch.items() if k != "labels"}

    latency = interleaved_medians({"base": no_grad_forward(base, inference_batch),
                                   "merged LoRA": no_grad_forward(merged, inference_batch),
                                   "unmerged LoRA": no_grad_forward(lora, inference_batch),
                                   "unmerged DoRA": no_grad_forward(dora, inference_batch)}, args.rounds)
    print("\ninference, median seconds per batch:")
    for name, seconds in latency.items():
        print(f"  {name:>13}: {seconds:.3f}")

    breakdown, top = profile_step(models["lowrank LoRA"], batch)
    total = sum(seconds for seconds, _ in breakdown.values())
    print("\nwhere the lowrank LoRA step goes (torch.profiler, self time; the profiler adds its own overhead):")
    for name, (seconds, gflop) in breakdown.items():
        rate = f"  ({gflop / seconds:.0f} GFLOP/s)" if gflop else ""
        print(f"  {100 * seconds / total:5.1f} %  {1000 * seconds:7.1f} ms  {name}{rate}")
    print("top operators:")
    for name, seconds in top:
        print(f"  {100 * seconds / total:5.1f} %  {1000 * seconds:7.1f} ms  {name}")

    flops = step_flops(models["lowrank LoRA"], batch)
    rate = matmul_rate(device)
    achieved = flops / steps["lowrank LoRA"]
    ratios = {
        "lowrank LoRA / PEFT LoRA step": steps["lowrank LoRA"] / steps["PEFT LoRA"],
        "lowrank DoRA / PEFT DoRA step": steps["lowrank DoRA"] / steps["PEFT DoRA"],
        "DoRA / LoRA step (lowrank)": steps["lowrank DoRA"] / steps["lowrank LoRA"],
        "LoRA / full FT step (lowrank)": steps["lowrank LoRA"] / steps["full FT"],
        "DoRA / LoRA step memory (lowrank)": memory["lowrank DoRA"].training_extra / memory["lowrank LoRA"].training_extra,
        "lowrank LoRA / PEFT LoRA step memory": memory["lowrank LoRA"].training_extra / memory["PEFT LoRA"].training_extra,
        "lowrank DoRA / PEFT DoRA step memory": memory["lowrank DoRA"].training_extra / memory["PEFT DoRA"].training_extra,
        "DoRA detached / not detached memory": memory["lowrank DoRA"].training_extra
        / memory["lowrank DoRA, norm not detached"].training_extra,
        "merged / base inference": latency["merged LoRA"] / latency["base"],
        "unmerged / merged inference": latency["unmerged LoRA"] / latency["merged LoRA"],
        "unmerged DoRA / unmerged LoRA inference": latency["unmerged DoRA"] / latency["unmerged LoRA"],
        "LoRA step FLOP rate / matmul rate": achieved / rate,
    }
    print(f"\nLoRA step: {flops / 1e9:.1f} GFLOP in {steps['lowrank LoRA']:.3f} s = {achieved / 1e9:.0f} GFLOP/s; "
          f"torch.mm 2048^3: {rate / 1e9:.0f} GFLOP/s")
    print("\nratios (one run, interleaved):")
    for name, value in ratios.items():
        print(f"  {name:>39}: {value:.3f}")

    results = {"device": str(device), "threads": torch.get_num_threads(), "rounds": args.rounds,
               "step_seconds": steps, "step_memory_mb": {k: v.training_extra / MIB for k, v in memory.items()},
               "inference_seconds": latency, "lora_step_gflop": flops / 1e9, "matmul_gflops": rate / 1e9,
               "lora_step_profile": {name: {"seconds": t, "gflop": f} for name, (t, f) in breakdown.items()},
               "lora_step_top_operators": dict(top), "ratios": ratios}
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, ROOT / "figures" / "bench.png")
    print("\nwrote bench/results.json and figures/bench.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key, title in [(axes[0], "step_seconds", "training step (s, median)"),
                           (axes[1], "step_memory_mb", "step memory beyond weights (MiB)"),
                           (axes[2], "inference_seconds", "inference per batch (s, median)")]:
        names, values = zip(*results[key].items())
        ax.barh(names, values, color="tab:blue")
        ax.set_title(title)
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=8)
    fig.suptitle(f"lowrank vs PEFT, batch 32x64, q,v r=8 ({results['device']}, {results['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
