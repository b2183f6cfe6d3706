# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 — Wrap-up: what the course showed, and what to read next
#
# This notebook trains nothing. It reads what notebooks 02, 03 and 04 and the study command of notebook 06
# (`python -m lowrank.figure2`) saved in `figures/`: the committed full-profile results, or whatever your own last
# runs wrote there (the first table names the profile). It prints the headline numbers, sums up each notebook, and
# ends with a reading list.
#
# **Runtime, measured:** 1 s with `LOWRANK_PROFILE=quick`, 1 s with `full`, on a 2-core machine whose CPU has AMX, so training ran in bf16 (the default, `LOWRANK_PRECISION=auto`: bf16 where the hardware multiplies it, else fp32). Both were measured two notebooks at a time, one torch thread each: quick under `make test` (fp32 `torch.mm` 2048³ at about 125–150 GFLOP/s per thread), full under `make course` (163 GFLOP/s per thread). Times scale roughly inversely with your machine's rate.

# %%
import csv
import json
from pathlib import Path

import numpy as np

# The repository's figures/ folder: the first parent of this notebook's folder that has one.
FIGURES = next(folder / "figures" for folder in (Path.cwd(), *Path.cwd().parents) if (folder / "figures").is_dir())


def read_rows(name: str) -> list[dict]:
    with open(FIGURES / name, newline="") as handle:
        return list(csv.DictReader(handle))


READ = ["02_results.json", "03_results.json", "04_points.csv", "06_ablation_runs.json", "06_ablation_correlations.csv"]
print("reading", ", ".join(READ), "from the repository's figures/:", all((FIGURES / name).is_file() for name in READ))

# %% [markdown]
# ## LoRA against full fine-tuning (notebook 02)

# %%
saved = json.loads((FIGURES / "02_results.json").read_text())
results = saved["results"]
print(f"notebook 02, {saved['profile']} profile")
print(f"{'':>22} {'val acc':>8} {'test acc':>9} {'trainable':>12} {'step memory MiB':>15}")
for label, r in results.items():
    print(f"{label:>22} {r['validation accuracy']:>8.1%} {r['test accuracy']:>9.1%} {r['trainable']:>12,} "
          f"{r['step memory MiB']:>15.0f}")
full = results["full fine-tuning"]
best = max((label for label in results if label.startswith("LoRA")),  # chosen on validation, as in 02
           key=lambda k: results[k]["validation accuracy"])
gap = 100 * (full["test accuracy"] - results[best]["test accuracy"])
print(f"\n{best} (the better LoRA on validation): {abs(gap):.1f} points {'behind' if gap > 0 else 'ahead of'} full fine-tuning, training "
      f"{results[best]['trainable'] / full['trainable']:.1%} of its parameters, with "
      f"{results[best]['step memory MiB'] / full['step memory MiB']:.0%} of its memory per training step")

# %% [markdown]
# ## DoRA against LoRA, and the yardstick for their difference (notebook 03)
#
# Notebook 03 trained LoRA on the query and value matrices again, with the same settings as notebook 02's except
# the random draw of `A`, and DoRA on the same budget. The gap between the two LoRA runs is one measurement of
# seed-to-seed noise, the yardstick for DoRA's difference from LoRA:

# %%
saved_03 = json.loads((FIGURES / "03_results.json").read_text())
lora_02, lora_03 = results["LoRA q,v r=8"]["test accuracy"], saved_03["results"]["lora"]["test accuracy"]
dora = saved_03["results"]["dora"]["test accuracy"]
print(f"notebook 03, {saved_03['profile']} profile: LoRA q,v {lora_03:.1%}, DoRA {dora:.1%} "
      f"({100 * (dora - lora_03):+.1f} points)")
if saved_03["profile"] == saved["profile"]:
    print(f"LoRA q,v in notebook 02: {lora_02:.1%}; the two LoRA runs differ by {100 * abs(lora_02 - lora_03):.1f} "
          "points, with only the draw of A changed")
else:
    print("notebooks 02 and 03 saved results of different profiles: run both in one profile to compare")

# %% [markdown]
# ## The DoRA paper's Figure 2 on this course's model (notebooks 04 and 06)
#
# Notebook 04's runs, query matrices: the pooled Pearson correlation of ΔM with ΔD over all layers and
# checkpoints (the number the paper reports), next to the paper's (VL-BART):

# %%
paper = {"FT": -0.62, "LoRA": 0.83, "DoRA": -0.31}
points = [r for r in read_rows("04_points.csv") if r["module"].endswith("q_lin")]
for method, quoted in paper.items():
    chosen = [r for r in points if r["method"] == method]
    r = np.corrcoef([float(p["delta_d"]) for p in chosen], [float(p["delta_m"]) for p in chosen])[0, 1]
    print(f"{method:>5}: {r:+.2f} here, {quoted:+.2f} in the paper; same sign: {np.sign(r) == np.sign(quoted)}")

# %% [markdown]
# Notebook 06's study, query matrices: the correlation across layers with the time trend removed ("within
# checkpoints"), for each run, next to the factor `c` by which weight decay shrank the parameter that carries the
# row norms (1 where decay does not reach it: no decay, LoRA's frozen `W0`, or DoRA's magnitude exempted):

# %%
runs = json.loads((FIGURES / "06_ablation_runs.json").read_text())
within = {(r["condition"], r["method"]): float(r["value"]) for r in read_rows("06_ablation_correlations.csv")
          if r["statistic"] == "within checkpoints" and r["kind"] == "pearson"}
print(f"{'condition':<24}{'method':<7}{'c':>7}{'within checkpoints':>20}")
for run in runs.values():
    print(f"{run['condition']:<24}{run['method']:<7}{run['row_norm_decay_factor']:>7.3f}"
          f"{within[(run['condition'], run['method'])]:>+20.2f}")
decayed = [within[(r["condition"], r["method"])] for r in runs.values() if r["row_norm_decay_factor"] < 1]
undecayed = [within[(r["condition"], r["method"])] for r in runs.values() if r["row_norm_decay_factor"] == 1]
print(f"\nruns whose row norms were decayed (c < 1): {sum(v < 0 for v in decayed)} of {len(decayed)} negative; "
      f"the others: {sum(v > 0 for v in undecayed)} of {len(undecayed)} positive")

# %% [markdown]
# ## What the course showed
#
# * **01 — LoRA from scratch.** A fine-tuning update is concentrated in few directions, which is the bet LoRA
#   makes; the layer is `W + (α/r)·B·A` with `B` zero at the start; with the seed article's `α` the first step grows
#   with the rank, `α/r` (LoRA, PEFT) removes that growth but over-corrects, and rsLoRA's `α/√r` keeps it flat; merging makes the adapted model cost what the base costs; the seed
#   article's mistakes, each run.
# * **02 — LoRA on DistilBERT.** Where the adapters go, why the new classification head trains in full, and four
#   ways to fine-tune on one budget: the table above is that comparison. Read its accuracy differences with
#   notebook 02's paired (McNemar) tests: in the committed run LoRA q,v, LoRA on all linear layers and full
#   fine-tuning cannot be told apart, and the line under the table compares the LoRA chosen on validation with full
#   fine-tuning. A re-run that changed only dropout's random numbers and float rounding reordered them (notebook 02, section 3): one run
#   ranks trained models, not methods. The gaps in trainable parameters and memory are far larger than any noise.
# * **03 — DoRA.** The paper's "column" norm is PyTorch's row norm (`dim=1` of `nn.Linear.weight`); DoRA's layer,
#   its efficient forward, the paper's detached norm and what it saves, the same numbers as PEFT, and a merge that
#   changes no prediction.
# * **04 — Magnitude versus direction.** The paper's ΔM/ΔD analysis, written out and run: the printed signs above
#   say where this course's runs agree with the paper's figure. A pooled correlation mixes the time trend with
#   the differences between layers.
# * **05 — Adapters that travel.** Saving only the trainable tensors as safetensors with per-tensor digests,
#   loading them back, a round trip through PEFT's format, the errors a mismatched load gives, and the Figure-2
#   analysis of checkpoints on disk (`python -m lowrank.analyze`).
# * **06 — When does the slope turn negative?** A study that changes one factor at a time finds what turns the slope
#   across layers negative here: weight decay of the parameter that carries the row norms (FT's weights, DoRA's
#   magnitude), at the paper's cumulative strength. The last table above counts the runs; the one decayed run that
#   is not negative, FT in the long regime, is the sign that changed between the study's two runs (notebook 06,
#   section 6). Notebook 06 gives their intervals, which are wide with six layers, and shows that where the
#   checkpoints sit changes the pooled number.
#
# The `solutions/` folder next to this notebook holds a checked solution to every exercise.
#
# ## Reading list
#
# * **LoRA** — Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
#   [arXiv:2106.09685](https://arxiv.org/abs/2106.09685). The method of notebooks 01–02: frozen weights, a trainable
#   low-rank update `B·A` with `B` zero at the start and scale `α/r`, no extra inference latency once merged; on
#   GPT-3 175B it reports 10,000× fewer trainable parameters and 3× less GPU memory than full fine-tuning with Adam.
# * **Intrinsic dimension** — Aghajanyan, Zettlemoyer and Gupta, 2020, "Intrinsic Dimensionality Explains the
#   Effectiveness of Language Model Fine-Tuning", [arXiv:2012.13255](https://arxiv.org/abs/2012.13255). Why a small
#   update can be enough: optimising 200 parameters, randomly projected into RoBERTa's full parameter space, reaches
#   90 % of full fine-tuning on MRPC, and pre-training lowers the intrinsic dimension.
# * **Weight normalization** — Salimans and Kingma, 2016, "Weight Normalization: A Simple Reparameterization to
#   Accelerate Training of Deep Neural Networks", [arXiv:1602.07868](https://arxiv.org/abs/1602.07868). Writes each
#   weight vector as a length times a unit direction, `w = g·v/‖v‖`, to improve the conditioning of training; DoRA's
#   `m·V/‖V‖` is this reparameterisation, with LoRA moving `V`.
# * **DoRA** — Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (ICML 2024),
#   [arXiv:2402.09353](https://arxiv.org/abs/2402.09353). The magnitude/direction analysis of notebook 04, the
#   decomposition of notebook 03, and the detached norm of its section 4.3; it reports gains over LoRA when
#   fine-tuning LLaMA, LLaVA and VL-BART.
# * **rsLoRA** — Kalajdzievski, 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
#   [arXiv:2312.03732](https://arxiv.org/abs/2312.03732). Proves that the update should be scaled by `α/√r`: with
#   `α/r`, learning slows at higher ranks (notebook 01 measures the first step; its first exercise builds the layer).
#   PEFT: `use_rslora=True`.
# * **LoRA+** — Hayou, Ghosh and Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models",
#   [arXiv:2402.12354](https://arxiv.org/abs/2402.12354). Argues, for wide models, that `A` and `B` should not share a
#   learning rate, and gives `B` a larger one by a fixed ratio; it reports 1–2 % better results and up to about 2×
#   faster fine-tuning. PEFT: `peft.optimizers.create_loraplus_optimizer`.
# * **Which factor to zero** — Hayou, Ghosh and Yu, 2024, "The Impact of Initialization on LoRA Finetuning
#   Dynamics", [arXiv:2406.08447](https://arxiv.org/abs/2406.08447). Zeroing `B` (with `A` random, PEFT's default)
#   and zeroing `A` both start at the pretrained model but train differently: zeroing `B` allows larger learning
#   rates and performs better on average (notebook 01's second exercise shows which factor moves first).
# * **QLoRA** — Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs",
#   [arXiv:2305.14314](https://arxiv.org/abs/2305.14314). Backpropagates through a frozen base model quantised to
#   4 bits (the NF4 data type, double quantisation, paged optimisers) into LoRA adapters: a 65B-parameter model
#   fine-tuned on one 48 GB GPU.
# * **VeRA** — Kopiczko, Blankevoort and Asano, 2023, "VeRA: Vector-based Random Matrix Adaptation",
#   [arXiv:2310.11454](https://arxiv.org/abs/2310.11454). One pair of frozen random low-rank matrices shared by all
#   layers, and only small scaling vectors trained per layer: about 10× fewer trainable parameters than LoRA.
# * **PiSSA** — Meng, Wang and Zhang, 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of
#   Large Language Models", [arXiv:2404.02948](https://arxiv.org/abs/2404.02948). LoRA's architecture, but `A` and
#   `B` start from the principal singular values and vectors of `W` and the residual is frozen: it converges faster
#   than LoRA. PEFT: `init_lora_weights="pissa"`.
# * **LoRA learns less and forgets less** — Biderman et al., 2024, [arXiv:2405.09673](https://arxiv.org/abs/2405.09673)
#   (TMLR). On code and mathematics, LoRA learns the target domain less well than full fine-tuning but keeps more
#   of the base model's abilities outside it; full fine-tuning's weight changes have a rank 10–100× that of typical
#   LoRA settings.
# * **PEFT's documentation** — the library this course checks itself against (its LoRA guide and the `LoraConfig`
#   reference: `target_modules`, `modules_to_save`, `use_dora`, `use_rslora`, `init_lora_weights`); source and links
#   at [github.com/huggingface/peft](https://github.com/huggingface/peft).
# * **Raschka's appendix E** — Sebastian Raschka, *Build a Large Language Model (From Scratch)*, appendix E,
#   "Parameter-efficient fine-tuning with LoRA" (code: [github.com/rasbt/LLMs-from-scratch](https://github.com/rasbt/LLMs-from-scratch)).
#   The same from-scratch approach on a GPT model, for the book's chapter-6 spam classifier: a second, gentler
#   walk through notebooks 01–02.
