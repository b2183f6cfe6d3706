# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 — Wrap-up: what the course showed, and what to read next
#
# This notebook trains nothing. It reads what notebooks 02, 03 and 04 and the study of notebook 05 saved in
# `figures/` (the committed results, or whatever your own last runs wrote there: the results of 02 and 03 name their
# profile; the committed ones of 02 and 03 were made under bf16 autocast, 04's and the study's in fp32),
# prints the headline numbers with what they can and cannot tell apart, sums up each notebook, and ends with a
# reading list.
#
# A few seconds in either profile ([measured how](../docs/runtimes.md)); the profile does not matter here, since the
# notebook only reads saved results.

# %%
import csv
import json
from pathlib import Path

import numpy as np

from lowrank.comparison import mcnemar
from lowrank.figure2 import PAPER_CORRELATIONS, RUNS_FILE

# The repository's figures/ folder: the first parent of this notebook's folder that has one.
FIGURES = next(folder / "figures" for folder in (Path.cwd(), *Path.cwd().parents) if (folder / "figures").is_dir())
STUDY_CORRELATIONS = "05_ablation_correlations.csv"  # written by notebook 05 from the study's points


def read_rows(name: str) -> list[dict]:
    with open(FIGURES / name, newline="") as handle:
        return list(csv.DictReader(handle))


def correctness(saved: dict, label: str) -> list[bool] | None:
    """Per-test-tweet correctness a notebook saved ("1" = right), or None where it saved none."""
    rights = saved.get("test_correct", {}).get(label)
    return None if rights is None else [right == "1" for right in rights]


READ = ["02_results.json", "03_results.json", "04_points.csv", RUNS_FILE, STUDY_CORRELATIONS]
print("reading", ", ".join(READ), "from the repository's figures/:", all((FIGURES / name).is_file() for name in READ))

# %% [markdown]
# ## LoRA against full fine-tuning (notebook 02)
#
# Every accuracy below comes from one training run, scored on one test set. Its binomial standard error,
# `√(p(1 − p)/n)`, is about one point for `n` = 1,000 test tweets (the full profile) at any accuracy `p` between 80 and
# 95 %, so a difference
# under about two points is not resolved by the accuracies alone. The models are scored on the same tweets, so McNemar's
# paired test (notebook 02) asks the sharper question: do the tweets where exactly one of two models is right split
# evenly?

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
print(f"\n{best} (the better LoRA on validation): {abs(gap):.1f} points {'behind' if gap > 0 else 'ahead of'} full "
      f"fine-tuning, training {results[best]['trainable'] / full['trainable']:.1%} of its parameters, with "
      f"{results[best]['step memory MiB'] / full['step memory MiB']:.0%} of its memory per training step")
trained = [label for label in results if label != "head only"]
for i, first in enumerate(trained):
    for second in trained[i + 1:]:
        if correctness(saved, first) and correctness(saved, second):
            print(f"{first} vs {second}: {mcnemar(correctness(saved, first), correctness(saved, second))}")

# %% [markdown]
# Read a pair as different only where its p-value is small; a large p-value means this test set cannot tell those
# two trained models apart. Even a small one ranks the two *trained models*, not the methods: another seed (another
# draw of `A`, another dropout, another data order) can order them differently, and only several seeds per method
# would rank the methods. The gaps in trainable parameters and memory are far larger than any such noise.
#
# ## DoRA against LoRA (notebook 03)
#
# Notebook 03 trained LoRA on the query and value matrices again, with notebook 02's settings except the random draw
# of `A`, and DoRA on the same budget. The two LoRA runs show how far such a change moves one method's accuracy: the
# yardstick for DoRA's difference from LoRA. If the two notebooks ran on different machines, their arithmetic differs
# too (bf16 matrix products are computed differently on different CPUs), and the yardstick mixes both; the last line
# below says where each ran.

# %%
saved_03 = json.loads((FIGURES / "03_results.json").read_text())
lora_02, lora_03 = results["LoRA q,v r=8"]["test accuracy"], saved_03["results"]["lora"]["test accuracy"]
dora = saved_03["results"]["dora"]["test accuracy"]
print(f"notebook 03, {saved_03['profile']} profile: LoRA q,v {lora_03:.1%}, DoRA {dora:.1%} "
      f"({100 * (dora - lora_03):+.1f} points)")
if correctness(saved_03, "lora") and correctness(saved_03, "dora"):
    print(f"LoRA vs DoRA: {mcnemar(correctness(saved_03, 'lora'), correctness(saved_03, 'dora'))}")
if saved_03["profile"] == saved["profile"]:
    print(f"LoRA q,v in notebook 02: {lora_02:.1%}; the two LoRA runs differ by {100 * abs(lora_02 - lora_03):.1f} "
          "points (03 draws A anew)")
    if correctness(saved, "LoRA q,v r=8") and correctness(saved_03, "lora"):
        print(f"LoRA q,v in 02 vs in 03: {mcnemar(correctness(saved, 'LoRA q,v r=8'), correctness(saved_03, 'lora'))}")
    course_times = json.loads((FIGURES / "course_times.json").read_text())["notebooks"] \
        if (FIGURES / "course_times.json").exists() else {}
    where = [f"{name[:2]} in {entry['precision']} (fp32 torch.mm {entry['matmul_gflops_fp32']}, bf16 "
             f"{entry.get('matmul_gflops_bf16', '?')} GFLOP/s per thread)"
             for name, entry in ((n, course_times.get(f"notebooks/{n}.ipynb")) for n in
                                 ("02_lora_on_distilbert", "03_dora_magnitude_direction")) if entry]
    if where:
        print("where they ran:", "; ".join(where))
else:
    print("notebooks 02 and 03 saved results of different profiles: run both in one profile to compare")

# %% [markdown]
# With one seed per method and about 1,000 test tweets, no difference under about two points between DoRA and LoRA
# is resolved, whichever way it points. The paper's own gains of DoRA over LoRA on VL-BART are of that size (about one
# point on image-text tasks, two on video-text tasks), on a larger model trained for longer.
#
# ## The DoRA paper's Figure 2 on this course's model (notebooks 04 and 05)
#
# Notebook 04's runs, query matrices: the Pearson correlation of ΔM with ΔD over all of a panel's layers and
# checkpoints ("pooled"), next to the one correlation per method that the paper reports for VL-BART. The paper names
# neither its statistic nor how it combined a panel's points, so compare the signs:

# %%
points = [r for r in read_rows("04_points.csv") if r["module"].endswith("q_lin")]
for method, quoted in PAPER_CORRELATIONS.items():
    chosen = [r for r in points if r["method"] == method]
    r = np.corrcoef([float(p["delta_d"]) for p in chosen], [float(p["delta_m"]) for p in chosen])[0, 1]
    print(f"{method:>5}: {r:+.2f} here, {quoted:+.2f} in the paper; same sign: {np.sign(r) == np.sign(quoted)}")

# %% [markdown]
# Notebook 05's study, query matrices: the correlation across layers with the time trend removed ("within
# checkpoints") with its 95 % interval, for each run, next to the factor `c` by which weight decay shrank the
# parameter that carries the row norms (1 where decay does not reach it: no decay, LoRA's frozen `W0`, or DoRA's
# magnitude exempted). Read a sign only where its interval excludes zero.

# %%
runs = json.loads((FIGURES / RUNS_FILE).read_text())
within = {(r["condition"], r["method"]): r for r in read_rows(STUDY_CORRELATIONS)
          if r["statistic"] == "within checkpoints" and r["kind"] == "pearson"}
print(f"{'condition':<24}{'method':<7}{'c':>7}{'within checkpoints [95% CI]':>30}{'excludes 0':>12}")
not_read = []
for run in runs.values():
    row = within.get((run["condition"], run["method"]))
    if row is None:  # a run of the study that notebook 05 has not read yet
        not_read.append(f"{run['condition']}/{run['method']}")
        continue
    value, low, high = (float(row[k]) for k in ("value", "low", "high"))
    print(f"{run['condition']:<24}{run['method']:<7}{run['row_norm_decay_factor']:>7.3f}"
          f"{f'{value:+.2f} [{low:+.2f}, {high:+.2f}]':>30}{str(low > 0 or high < 0):>12}")
if not_read:
    print(f"\n{len(not_read)} runs of the study have no correlation in {STUDY_CORRELATIONS} yet (run notebook 05): "
          + ", ".join(not_read))

# %% [markdown]
# What the study found (notebook 05's last section names the measurement behind each sentence). With weight decay at
# our estimate of the paper's cumulative strength, full fine-tuning's slope across layers in the short regime is
# negative in both the query and the value matrices (in the long regime only its value slope is; its query slope is
# not negative), and it stays negative when a rescaling that leaves the network's outputs unchanged
# moves the large row norms to other layers: decay ties each layer's ΔM to its row norm, and FT's ΔD falls with the
# norm. Without decay, a larger FT update, by more steps alone or a higher learning rate alone, left its slope
# positive up to the largest update a healthy run reached (settled for the higher learning rate; for more steps alone
# the interval still includes zero). LoRA's slope stays positive (decay never reaches its frozen
# `W0`). DoRA's evidence is weaker: its query slope
# rests on a single layer and turns positive under the rescaling (not settled either way), and its value slope
# excludes zero in some
# conditions only. The paper's own account (its §4.2) and the decay account predict the same sign for most settled
# runs (LoRA, and FT with decay), so those runs cannot tell them apart; the ones that do are runs without any weight
# decay, a setting outside the paper's own training (which used decay), and there the settled signs are the decay
# account's, not §4.2's. That rests on a few runs, and says nothing about which account holds in the paper's runs.
# All of this is six layers of one small model, one seed per run, with the paper's decay compressed into a few hundred
# steps: a mechanism that produces the paper's signs here, not proof that it produced them in the paper's runs.

# %% [markdown]
# ## What the course showed
#
# * **01 — LoRA from scratch.** A fine-tuning update is concentrated in few directions, which is the bet LoRA
#   makes; the layer is `W + (α/r)·B·A` with `B` zero at the start; with the seed article's `α` the first step grows
#   with the rank, `α/r` (LoRA, PEFT) removes that growth but over-corrects, and rsLoRA's `α/√r` keeps it flat;
#   merging makes the adapted model cost what the base costs.
# * **02 — LoRA in a pretrained model.** Where the adapters go, why the new classification head trains in full, and
#   several ways to fine-tune on one budget: the first table above. Its accuracy differences are read with the paired
#   tests printed under it; one run ranks trained models, not methods.
# * **03 — DoRA.** The paper's "column" norm is PyTorch's row norm (`dim=1` of `nn.Linear.weight`; the seed article's
#   `dim=0` is the wrong axis and raises no error); DoRA's layer, its efficient forward, what the paper's detached
#   norm saves, the same numbers as PEFT, a merge that changes no prediction, and the paper's gradients, executed.
# * **04 — Magnitude versus direction.** The paper's ΔM/ΔD analysis, written out and run: the signs printed above
#   say where this course's runs agree with the paper's figure and where they do not. A pooled correlation mixes the
#   time trend with the differences between layers.
# * **05 — Why the slope turns negative.** A study that changes one factor at a time (weight decay, its dose, where the
#   large row norms sit, LoRA's α), reads the slope across layers with intervals and exact permutation tests, and
#   tests the paper's own explanation beside decay's (the last table above and the paragraph under it).
#
# Beside the path, the practitioner notebooks: [A1](in_practice/A1_speed_and_precision.ipynb) (speed and mixed
# precision), [A2](in_practice/A2_saving_and_sharing.ipynb) (saving adapters, sharing them with PEFT, crash-safe
# files) and [A3](in_practice/A3_your_own_checkpoints.ipynb) (Figure 2 for your own checkpoints).
#
# The `solutions/` folder next to this notebook holds a checked solution to every exercise.
#
# ## Reading list
#
# * **LoRA** — Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
#   [arXiv:2106.09685](https://arxiv.org/abs/2106.09685). The method of notebooks 01–02: frozen weights, a trainable
#   low-rank update `B·A` with `B` zero at the start and scale `α/r`, no extra inference latency once merged.
#   "Compared to GPT-3 175B fine-tuned with Adam, LoRA can reduce the number of trainable parameters by 10,000 times
#   and the GPU memory requirement by 3 times" (its abstract).
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
#   and zeroing `A` both start at the pretrained model but train differently: zeroing `B` performs better on
#   average, and "the reason behind this might be that the first initialization allows the use of larger learning
#   rates" (its abstract) (notebook 01's second exercise shows which factor moves first).
# * **QLoRA** — Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs",
#   [arXiv:2305.14314](https://arxiv.org/abs/2305.14314). Backpropagates through a frozen base model quantised to
#   4 bits (the NF4 data type, double quantisation, paged optimisers) into LoRA adapters: a 65B-parameter model
#   fine-tuned on one 48 GB GPU.
# * **VeRA** — Kopiczko, Blankevoort and Asano, 2023, "VeRA: Vector-based Random Matrix Adaptation",
#   [arXiv:2310.11454](https://arxiv.org/abs/2310.11454). One pair of frozen random low-rank matrices shared by all
#   layers, and only small scaling vectors trained per layer: far fewer trainable parameters than LoRA at the same
#   performance, in its abstract's words "significantly reduces the number of trainable parameters compared to LoRA".
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
#   walk through notebooks 01–02. Earlier versions of its LoRA layer scaled the update by `α`, not `α/r` (the seed
#   article's layer is one of them; notebook 01 §3 and §6 show what that does; the repository's issue #821); the
#   current repository uses `α/r` (its pull request #1080 calls `α/r` appendix E's convention). Printed copies of the
#   book may still have the earlier layer.
# * **Raschka's DoRA article** — Sebastian Raschka, 2024, "Improving LoRA: Implementing Weight-Decomposed Low-Rank
#   Adaptation (DoRA) from Scratch". LoRA and then DoRA built step by step on a small network, with diagrams. Read its
#   code with notebook 03 §1 at hand: it takes the magnitude's norm over `dim=0` of `nn.Linear.weight`, one norm per
#   input column, the axis notebook 03 §1 shows to be the wrong one (the paper's "column" norm is `dim=1` there).
