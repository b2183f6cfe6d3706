# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 — When does the slope turn negative?
#
# Notebook 04 drew the DoRA paper's Figure 2 and found that two of its three signs did not reproduce: full
# fine-tuning (FT) and DoRA came out with *positive* ΔM-vs-ΔD correlations where the paper reports negative ones
# (VL-BART query matrices: FT −0.62, LoRA +0.83, DoRA −0.31). The paper builds DoRA's design on that figure, and no
# code for it has been published (NVlabs/DoRA issue #15 asks for it), so it is worth finding out *what* makes the
# slope negative. This notebook reads a controlled study that changes one factor at a time, explains the result
# with a first-order account of ΔM and ΔD, and checks that account against the runs.
#
# The study's 13 training runs are made once by a command (about 65 minutes of training on one core, the sum of the
# per-run times in `figures/06_ablation_runs.json`; Ctrl-C keeps the finished runs and the same command resumes):
#
#     python -m lowrank.figure2 --out figures/
#
# It writes `figures/06_ablation_points.csv` (one row per layer, matrix, checkpoint and run), which this notebook
# reads; in every profile the notebook also re-runs a tiny version of one condition, so you see the machinery work.

# %% [markdown]
# ### Running this notebook
#
# **Runtime, measured:** 26 s with `LOWRANK_PROFILE=quick`, 27 s with `full`, on a 2-core machine whose CPU has AMX, so training ran in bf16 (the default, `LOWRANK_PRECISION=auto`: bf16 where the hardware multiplies it, else fp32). Both were measured two notebooks at a time, one torch thread each: quick under `make test` (fp32 `torch.mm` 2048³ at about 125–150 GFLOP/s per thread), full under `make course` (163 GFLOP/s per thread). Times scale roughly inversely with your machine's rate.
# The study itself is not re-run here (`make study`).
#
# **Which profile runs.** `full` (the default) is for self-study: the outputs saved in this notebook come from it.
# `quick` runs the same code at small sizes, for a live class and the tests; its numbers are noisier. The first line
# printed below names the profile that ran, with the backbone, the data and the device. To switch inside the
# notebook, set `PROFILE = "quick"` in the next cell (it sets `os.environ["LOWRANK_PROFILE"]` before `lowrank` is
# imported) and run from the top; or start Jupyter with the environment variable `LOWRANK_PROFILE=quick`.
#
# **Stopping early.** This notebook's own training is one tiny run of a few seconds. The study command above keeps its
# finished runs when interrupted (Ctrl-C), and the same command resumes where it stopped.

# %%
# The one place to choose the profile inside the notebook: None keeps $LOWRANK_PROFILE (default "full");
# "quick" for a live class, "full" for self-study. It must run before lowrank is imported: run from the top.
import os

PROFILE = None
if PROFILE:
    os.environ["LOWRANK_PROFILE"] = PROFILE

# %%
# Google Colab only (does nothing anywhere else): install the course package and its dependencies.
# First put your copy of this repository into the session, e.g. `!git clone <its address> /content/lowrank`.
import sys

if "google.colab" in sys.modules:
    import subprocess

    REPOSITORY = "/content/lowrank"  # where the clone is
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", REPOSITORY], check=True)
    sys.path.insert(0, REPOSITORY)  # importable now, without restarting the runtime

# %%
import csv
import json
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from lowrank import figure2
from lowrank.magnitude_direction import magnitude_direction_change, pooled_correlation
from lowrank.notebook import setup_notebook
from lowrank.settings import REPOSITORY_FIGURES, figure_path

profile = setup_notebook(use_device=False).profile
STUDY = REPOSITORY_FIGURES  # the committed study results
points = figure2.read_csv(STUDY / figure2.POINTS_FILE)
mechanism = figure2.read_csv(STUDY / figure2.MECHANISM_FILE)
runs = json.loads((STUDY / figure2.RUNS_FILE).read_text())
print(f"study: {len(runs)} runs, {len(points):,} points, "
      f"conditions {list(dict.fromkeys(r['condition'] for r in points))}")

# %% [markdown]
# ## 1. A first-order account of ΔM and ΔD
#
# Take one row `w` of a weight matrix (one output feature; notebook 03) and what training did to it. AdamW's
# *decoupled* weight decay multiplies the weight by `(1 − lr·λ)` at every step, whatever the gradient says; over a run
# that is a factor `c = Π(1 − lr_t·λ) ≈ exp(−λ·Σ lr_t)`. Write the trained row as `w_t = c·w + g`, where `g` is what
# the gradient steps added. Split `g` into its part along `w` (`g∥ = ⟨ŵ, g⟩`, with `ŵ = w/‖w‖`) and the rest (`g⊥`).
# To leading order (first order along `w`, second order across it):
#
# $$\|w_t\| - \|w\| \;\approx\; \underbrace{(c-1)\,\|w\|}_{\text{decay}} \;+\; \underbrace{\langle \hat w, g\rangle}_{\text{gradient, radial}}
#   \;+\; \frac{\|g_\perp\|^2}{2c\|w\|}, \qquad
#   1-\cos(w_t, w) \;\approx\; \frac{\|g_\perp\|^2}{2\,(c\|w\| + g_\parallel)^2} \;\approx\; \frac{\|g_\perp\|^2}{2c^2\|w\|^2}.$$
#
# Two consequences, before any experiment:
#
# * **Decay of the parameter that carries the row norm moves magnitude in proportion to the norm, and never moves
#   direction.** Its share of ΔM is `(1 − c)·‖w‖`: rows (and layers) with larger norms lose more. (Decay of LoRA's and
#   DoRA's `A` and `B` is different: it shrinks the low-rank update, and so reduces ΔD too.)
# * **A gradient step of a given size turns a small row more than a large one.** ΔD goes as `‖g⊥‖²/‖w‖²`. Adam makes
#   steps of roughly the same size per coordinate whatever the weight's scale, so `‖g⊥‖` does not grow with `‖w‖`.
#
# So *if decay dominates ΔM*, layers with large norms have large ΔM and small ΔD, and layers with small norms the
# reverse: a negative slope across layers. If the gradient dominates ΔM, both ΔM and ΔD grow with the size of `g`,
# and the slope is positive. Which parameter carries the row norm decides where decay can act: in FT it is the weight
# itself; in DoRA it is the magnitude vector `m` (the paper's official code decays it: its optimizer exempts only
# names containing `bias` or `LayerNorm.weight`); in LoRA the row norm lives in the frozen `W0`, and decay reaches only
# `A` and `B`, i.e. only the update.
#
# A check of the two approximations on one synthetic row (a 2 % shrink plus a small random step):

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
w = torch.randn(1, 384, dtype=torch.float64)
g = 2e-3 * torch.randn(1, 384, dtype=torch.float64)
c = 0.98
(row,) = figure2.mechanism_rows("check", "FT", {1: {"m.layer.0.q_lin": c * w + g}}, {"m.layer.0.q_lin": w}, [c, c])
print(f"norm change: measured {row.dm_signed:+.5f}; first order {row.dm_decay + row.dm_gradient + row.dm_second_order:+.5f}"
      f" = decay {row.dm_decay:+.5f} + gradient {row.dm_gradient:+.5f} + second order {row.dm_second_order:+.6f}")
print(f"1 - cos:     measured {row.dd_measured:.3e}; first order {row.dd_first_order:.3e}")

# %% [markdown]
# ## 2. The study: one factor at a time
#
# Every run uses this course's backbone and data, the same data order (seed 0), the same adapter initialisation,
# batch 16, the paper's linear schedule with 10 % warm-up, and for LoRA and DoRA the paper's adapter settings:
# r = α = 128 on the query and value matrices, lr 1e-3. Snapshots of all six layers' query and value matrices are
# taken at twelve evenly spaced steps. The factors:
#
# * **Regime size.** `short`: the paper's learning rates (FT 1e-4, adapters 1e-3) for 250 steps. `long`: 600 steps,
#   FT at 3e-4. The paper's FT moved its weights much further (its axes: FT ΔD 0.014–0.022) than a CPU budget allows:
#   that would take many thousands of steps at lr 1e-4. A larger learning rate is the other route; we raised FT's only
#   to 3e-4 (its test accuracy is in the table below), and the long regime still stays below the paper's range.
# * **Weight decay.** `wd0`: none. `wd_paper`: the official code's grouping at the paper's *cumulative* strength.
#   Decay's effect depends only on `λ·Σ lr_t` (section 1). The paper: λ = 0.01, 20 epochs at batch 500 over VQAv2, GQA,
#   NLVR2 and COCO captions — we estimate 1.2 to 2.2 million examples an epoch, so 50,000 to 90,000 steps — with a
#   linear schedule whose mean multiplier is about 0.5: `λ·Σlr ≈ 0.01 × 1e-4 × 0.5 × (5 to 9)·10⁴ ≈ 0.025 to 0.045` for
#   FT and ten times that for the adapters (lr 1e-3). We take 0.03 and 0.3 and set λ per run so that its own
#   `λ·Σ lr_t` equals them. The estimate is good to a factor of about two (the batch size per process and the
#   multi-task loader's per-task sampling change the step count), and only `c` matches the paper: packing it into a
#   few hundred steps takes a λ 30 to 240 times the paper's 0.01 (table below), so each step's decay pulls far harder
#   against each Adam step than in the paper, and the decay *shares* measured here need not hold there.
# * **DoRA's magnitude exempt from decay** (`wd_paper_m_exempt`): the same, but `m` is not decayed.
# * **Where the four plotted checkpoints sit** (no new runs): `even` (3, 6, 9, 12 of twelve) or `late` (9–12).
# * **The statistic**: pooled over all points (the paper's number), within checkpoints (across layers, the time trend
#   removed), per layer over time; Pearson and Spearman; 95 % intervals from resampling whole layers (the four
#   checkpoints of one layer are not independent points).

# %%
print(f"{'condition':<24}{'method':<7}{'steps':>6}{'lr':>8}{'λ':>9}{'λ·Σlr':>8}{'c (row norms)':>15}"
      f"{'test acc':>10}{'s/step':>8}")
for key, run in runs.items():
    print(f"{run['condition']:<24}{run['method']:<7}{run['steps']:>6}{run['lr']:>8.0e}{run['weight_decay']:>9.3g}"
          f"{run['cumulative_decay']:>8.2f}{run['row_norm_decay_factor']:>15.3f}{run['test_accuracy']:>10.1%}"
          f"{run['seconds_per_step']:>8.2f}")

# %% [markdown]
# The same machinery, live: a 12-step version of one condition (DoRA with the paper's decay), written to a
# temporary folder. Its points are far too few to mean anything; they show what one run records. Like the study, it
# trains in fp32 whatever the setup line's precision says (`figure2.STUDY_AUTOCAST`: the committed study is fp32).

# %%
scratch = Path(tempfile.mkdtemp(prefix="lowrank-figure2-"))
figure2.run_study(scratch, figure2.QUICK_CONDITIONS, train_size=512, eval_size=256)
live = figure2.read_csv(scratch / figure2.POINTS_FILE)
last = max(r["step"] for r in live)
first_query = next(r for r in live if r["step"] == last and r["layer"] == 0 and r["module"].endswith("q_lin"))
print(f"{len(live)} points (12 checkpoints × 6 layers × query and value); step {last}, layer 0 query: "
      f"ΔM = {first_query['delta_m']:.3g}, ΔD = {first_query['delta_d']:.3g}")

# %% [markdown]
# ## 3. The correlations, condition by condition
#
# Query matrices (the paper's panel), the paper's placement of checkpoints (`even`), every statistic with its
# layer-bootstrap interval. The paper's pooled Pearson values are in the last column.

# %%
# NBVAL_CHECK_OUTPUT
def show(table, statistics=("pooled", "within checkpoints", "per layer")):
    print(f"{'condition':<24}{'method':<7}{'statistic':<20}{'Pearson [95% CI]':<24}{'Spearman [95% CI]':<24}{'paper':>6}")
    for (condition, method, statistic) in dict.fromkeys((r["condition"], r["method"], r["statistic"]) for r in table):
        if statistic not in statistics:
            continue
        cells = {r["kind"]: r for r in table
                 if (r["condition"], r["method"], r["statistic"]) == (condition, method, statistic)}
        text = [f"{cells[k]['value']:+.2f} [{cells[k]['low']:+.2f}, {cells[k]['high']:+.2f}]" for k in ("pearson", "spearman")]
        paper = f"{figure2.PAPER_CORRELATIONS[method]:+.2f}" if statistic == "pooled" else ""
        print(f"{condition:<24}{method:<7}{statistic:<20}{text[0]:<24}{text[1]:<24}{paper:>6}")


query_table = figure2.correlation_table(points, "q_lin", "even", samples=1000)
show(query_table)
with open(figure_path("06_ablation_correlations.csv"), "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(query_table[0]))
    writer.writeheader()
    writer.writerows(query_table)

# %% [markdown]
# The figure, drawn as the paper draws it (x = ΔD, y = ΔM, a colour per layer, a marker per checkpoint), for the
# query matrices of the short regime without and with the paper's decay and of the long regime with it, at the `late`
# placement (section 5 shows why the placement matters):

# %%
fig = figure2.plot_study(points, ["short_wd0", "short_wd_paper", "long_wd_paper"], "q_lin", "late",
                         figure_path("06_ablation_query.png"))
plt.show()

# %% [markdown]
# ## 4. The mechanism, measured
#
# For every run, layer and checkpoint the study also recorded the split of section 1 (`06_ablation_mechanism.csv`):
# the mean row-norm change, measured and predicted, and its decay and gradient parts. At the last checkpoint, query
# and value matrices together (12 matrices per run). `ΔM (paper)` is the paper's mean of |row change|; the other
# columns are means of *signed* changes, in which rows that grow and rows that shrink cancel:

# %%
# NBVAL_CHECK_OUTPUT
def last_step_rows(condition, method):
    rows = [r for r in mechanism if r["condition"] == condition and r["method"] == method]
    last = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == last]


print(f"{'condition':<24}{'method':<7}{'ΔM (paper)':>11}{'ΔM (signed)':>12}{'predicted':>10}{'decay':>9}{'gradient':>10}"
      f"{'2nd order':>10}{'decay share':>12}{'ΔD':>10}{'ΔD pred.':>10}")
for key, run in runs.items():
    rows = last_step_rows(run["condition"], run["method"])
    mean = {k: np.mean([r[k] for r in rows]) for k in ("dm_signed", "dm_decay", "dm_gradient", "dm_second_order",
                                                       "dd_measured", "dd_first_order")}
    share = np.mean([abs(r["dm_decay"]) / (abs(r["dm_decay"]) + abs(r["dm_gradient"]) + abs(r["dm_second_order"]))
                     for r in rows])
    predicted = mean["dm_decay"] + mean["dm_gradient"] + mean["dm_second_order"]
    paper_dm = np.mean([r["delta_m"] for r in points if (r["condition"], r["method"], r["step"]) ==
                        (run["condition"], run["method"], rows[0]["step"])])
    print(f"{run['condition']:<24}{run['method']:<7}{paper_dm:>11.4f}{mean['dm_signed']:>+12.4f}{predicted:>+10.4f}"
          f"{mean['dm_decay']:>+9.4f}{mean['dm_gradient']:>+10.4f}{mean['dm_second_order']:>+10.4f}{share:>12.0%}"
          f"{mean['dd_measured']:>10.2e}{mean['dd_first_order']:>10.2e}")

# %% [markdown]
# And the prediction of section 1 across layers: at the last checkpoint, does ΔM rise with the layer's mean row norm
# (decay's signature) and ΔD fall with it? Rank correlations over the six layers, per matrix type:

# %%
# NBVAL_CHECK_OUTPUT
from lowrank.magnitude_direction import spearman


def last_step_layers(condition, method, suffix):
    """Per layer at the last checkpoint: mean row norm of W0, ΔM and ΔD (from the points file)."""
    norms = {r["layer"]: r["row_norm"] for r in last_step_rows(condition, method) if r["module"].endswith(suffix)}
    last = max(r["step"] for r in points if r["condition"] == condition and r["method"] == method)
    chosen = sorted((r for r in points if (r["condition"], r["method"], r["step"]) == (condition, method, last)
                     and r["module"].endswith(suffix)), key=lambda r: r["layer"])
    return [norms[r["layer"]] for r in chosen], [r["delta_m"] for r in chosen], [r["delta_d"] for r in chosen]


print(f"{'condition':<24}{'method':<7}{'matrices':<9}{'ρ(norm, ΔM)':>12}{'ρ(norm, ΔD)':>12}{'ρ(ΔD, ΔM)':>11}")
for key, run in runs.items():
    for suffix, label in (("q_lin", "query"), ("v_lin", "value")):
        norm, dm, dd = last_step_layers(run["condition"], run["method"], suffix)
        print(f"{run['condition']:<24}{run['method']:<7}{label:<9}{spearman(norm, dm):>+12.2f}{spearman(norm, dd):>+12.2f}"
              f"{spearman(dd, dm):>+11.2f}")

# %% [markdown]
# The same, drawn: each point is one matrix (query or value) of one layer at the last checkpoint of the short regime.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for condition, marker in (("short_wd0", "o"), ("short_wd_paper", "s")):
    for method, colour in (("FT", "tab:blue"), ("LoRA", "tab:orange"), ("DoRA", "tab:green")):
        norm, dm, dd = [sum(parts, []) for parts in zip(*(last_step_layers(condition, method, s) for s in ("q_lin", "v_lin")))]
        axes[0].scatter(norm, dm, marker=marker, color=colour, label=f"{method}, {condition}", edgecolors="black", linewidths=0.4)
        axes[1].scatter(norm, dd, marker=marker, color=colour, edgecolors="black", linewidths=0.4)
axes[0].set(xlabel="mean row norm of W0", ylabel="ΔM (log scale)", yscale="log", title="magnitude change vs row norm")
axes[1].set(xlabel="mean row norm of W0", ylabel="ΔD (log scale)", yscale="log", title="direction change vs row norm")
axes[0].legend(fontsize=7)
fig.tight_layout()
fig.savefig(figure_path("06_mechanism.png"), dpi=110)
plt.show()

# %% [markdown]
# ## 5. Where the checkpoints sit
#
# The paper plots three intermediate steps and the final one without saying where the intermediate steps are. Pooled
# Pearson on the query matrices, with layer-bootstrap intervals, with the four checkpoints spread over the run (`even`)
# or bunched at its end (`late`):

# %%
# NBVAL_CHECK_OUTPUT
late_table = figure2.correlation_table(points, "q_lin", "late", samples=1000)
print(f"{'condition':<24}{'method':<7}{'even [95% CI]':>22}{'late [95% CI]':>22}{'paper':>8}")
for (condition, method) in dict.fromkeys((r["condition"], r["method"]) for r in query_table):
    cell = {name: next(f"{r['value']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]" for r in table
                       if (r["condition"], r["method"], r["statistic"], r["kind"]) == (condition, method, "pooled", "pearson"))
            for name, table in (("even", query_table), ("late", late_table))}
    print(f"{condition:<24}{method:<7}{cell['even']:>22}{cell['late']:>22}{figure2.PAPER_CORRELATIONS[method]:>+8.2f}")

# %% [markdown]
# ## 6. The same study, run twice
#
# How much of the above would a re-run change? `figures/06_replicate/` holds an earlier run of the same 13 runs by
# the same command (at commit `c3c3f89`): same data, order, seed, settings and adapter initialisation, but made before
# `lowrank.train` ran each batch in length groups with a fused AdamW (notebook 02), and before the LoRA and DoRA
# layers' forward was rearranged (the same maths in another order), so dropout drew other random numbers and the
# arithmetic rounded differently. That is a re-run, not a new seed; two runs cannot give a spread,
# but they show which signs move. Three of the most-read statistics, query matrices, this run beside the replicate:

# %%
# NBVAL_CHECK_OUTPUT
REPLICATE = STUDY / "06_replicate"
replicate = figure2.read_csv(REPLICATE / figure2.POINTS_FILE)
replicate_runs = json.loads((REPLICATE / figure2.RUNS_FILE).read_text())
gaps = {key: 100 * (runs[key]["test_accuracy"] - replicate_runs[key]["test_accuracy"]) for key in runs}
widest = max(gaps, key=lambda key: abs(gaps[key]))
print(f"test accuracy, this run minus the replicate: largest gap {gaps[widest]:+.1f} points ({widest}), "
      f"median |gap| {np.median(np.abs(list(gaps.values()))):.1f}")
tables = {"even": (query_table, figure2.correlation_table(replicate, "q_lin", "even", samples=1000)),
          "late": (late_table, figure2.correlation_table(replicate, "q_lin", "late", samples=1000))}


def pearson(table, condition, method, statistic):
    return next(r for r in table if (r["condition"], r["method"], r["statistic"], r["kind"]) ==
                (condition, method, statistic, "pearson"))


print(f"{'statistic':<30}{'condition':<24}{'method':<7}{'this run [95% CI]':>22}{'replicate [95% CI]':>22}  sign")
for placement, statistic in (("even", "pooled"), ("even", "within checkpoints"), ("late", "pooled")):
    for condition, method in dict.fromkeys((r["condition"], r["method"]) for r in query_table):
        this, other = (pearson(table, condition, method, statistic) for table in tables[placement])
        text = [f"{r['value']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]" for r in (this, other)]
        same = "same" if np.sign(this["value"]) == np.sign(other["value"]) else "DIFFERS"
        print(f"{statistic + ', ' + placement:<30}{condition:<24}{method:<7}{text[0]:>22}{text[1]:>22}  {same}")

# %% [markdown]
# ## 7. What produces the paper's pattern here, and what does not
#
# **What produces the paper's pattern here: weight decay at the paper's cumulative strength, read at late checkpoints,
# in the short regime.** Both runs of the study agree on that; in the long regime they disagree on FT's sign. Every
# number below is printed in a table above.
#
# * **Without decay, every Pearson slope is positive,** in both runs (section 6), DoRA's only weakly in the replicate
#   (within checkpoints +0.10 and +0.06, intervals across zero). In this run (`wd0`, section 3, pooled Pearson,
#   `even`): FT +0.89 and +0.93 (short and long regime), LoRA +0.99 and +1.00, DoRA +0.51 and +0.66. For LoRA, section 4 shows
#   why: nearly all its ΔM is the second-order term, the lengthening a perpendicular step gives any row (`c‖w‖·ΔD`;
#   ‖w‖·ΔD without decay): 0.0123 of its paper ΔM of 0.0134 in the short regime. For FT that term is a smaller part
#   (0.0002 of 0.0012 short, 0.0026 of 0.0042 long): single rows also grow or shrink along themselves, which cancels
#   in the signed mean but not in the paper's mean of |·|. In DoRA the row norm *is* the magnitude `m`; the
#   normalisation removes the lengthening (its gradient column, which contains the normalisation, cancels the
#   second-order column: −0.0130 against +0.0117 in the short regime), and what remains is what Adam does to `m`: a
#   weaker tie.
# * **With the paper's decay, FT and DoRA turn negative across layers in the short regime; LoRA does not.** Decay is
#   99 % (short regime) and 92 % (long) of the summed sizes of the three terms of FT's ΔM (section 4's "decay share";
#   its signed ΔM is then mostly the decay term), 97 % and 93 % of DoRA's, and has no direct term in LoRA's (c = 1:
#   decay never reaches `W0`). At the last checkpoint of the short regime, ΔM rises with the layers' row norm
#   (ρ = +1.00 for FT and DoRA, query and value) while ΔD falls with it (ρ from −0.49 to −0.94). The
#   within-checkpoint correlation (`even` placement, section 6) is negative in both runs: FT −0.88 [−0.99, −0.74] here (−0.90 in the replicate, both
#   intervals excluding zero), DoRA −0.57 [−0.96, +0.72] (−0.58 in the replicate, whose interval excluded zero; this
#   one's does not). LoRA stays at +1.00.
# * **In the long regime, FT's sign does not replicate.** With decay, its within-checkpoint correlations were DoRA −0.37
#   and FT +0.15 here against −0.61 and −0.35 in the replicate: FT's sign changed between two runs that differ only in
#   dropout's random numbers and rounding, DoRA's stayed negative, and every interval reaches across zero. Here FT's query ΔD even rises with the row
#   norm at the last checkpoint (ρ = +0.54). Decay still makes 92–93 % of FT's and DoRA's ΔM there; what it does to
#   the slope across six layers is within run-to-run noise.
# * **Exempting DoRA's magnitude from decay** (`long_wd_paper_m_exempt`) removes decay's share of its ΔM (mean signed
#   ΔM −0.0018 against −0.3643 with `m` decayed). Its within-checkpoint correlation moves from −0.37 [−0.95, +0.94] to
#   +0.83 [−0.57, +0.98] here (−0.61 to −0.05 in the replicate): the same direction in both runs, by an amount the
#   intervals cannot pin down. At the `late` placement its pooled value is +0.78 here and −0.26 in the replicate.
#   Decay of `A` and `B`, which this condition keeps, also acts on DoRA.
# * **The paper's pooled number also depends on where the checkpoints sit.** Decay's ΔM grows with `Σ lr` just as ΔD
#   grows with training, so checkpoints spread over the run add a positive time trend: with the `even` placement FT
#   stays positive under decay (+0.64 short, +0.73 long) and DoRA near zero (+0.02, +0.05). At the `late` placement,
#   where the linear schedule has nearly stopped, the short regime has the paper's three signs in both runs: FT −0.80
#   (replicate −0.82), DoRA −0.54 (−0.56), LoRA +1.00 (+1.00); paper −0.62, −0.31, +0.83. The long regime gives FT
#   +0.18 here against −0.20 in the replicate, DoRA −0.36 (−0.62), LoRA +0.99 (+1.00). Of the FT and DoRA values, only
#   short-regime FT's interval excludes zero there, in both runs (LoRA's exclude zero too): with six layers, the rest
#   are directions, not settled values.
# * **What does not produce it: a larger regime alone.** Without decay, the long regime moved FT's weights about ten
#   times further (ΔD 2.10e-03 against 1.96e-04 at the last checkpoint, query and value matrices, section 4; still below the paper's FT axis, 0.014–0.022)
#   and its slope stayed as positive (+0.93 against +0.89).
#
# Limits: six layers per panel (wide intervals), one small model, one task, one seed run twice with different dropout
# draws and rounding. The decay strength was not tuned to match the paper: it is our estimate of the paper's own `λ·Σlr`
# (section 2), good to a factor of about two, and only its cumulative effect `c` matches — each step's decay here is
# far stronger than the paper's. The paper does not say where its intermediate checkpoints sit; this study shows that
# the answer changes its pooled number.
#
# ## What you learned
#
# * To first order, weight decay changes a row's **magnitude** in proportion to its norm and never its **direction**,
#   while a gradient step turns a small row more than a large one; a step perpendicular to a row also lengthens it,
#   by about `c‖w‖·ΔD`.
# * Where the decayed parameter carries the row norm (FT's weights, DoRA's magnitude), decay at the paper's cumulative
#   strength dominated ΔM in these runs and, in the short regime, gave negative slopes across layers in both runs of
#   the study (FT's intervals exclude zero; DoRA's do not in this run); in the long regime FT's sign did not survive
#   a re-run, and DoRA's stayed negative with intervals across zero. LoRA's decay cannot reach `W0`, so LoRA stayed
#   positive.
# * Without decay, the longer regime moved the weights further and no slope turned negative: size alone does not
#   produce the paper's pattern (section 7).
# * Six layers make a slope's sign fragile: a re-run that changed only dropout's random numbers and rounding flipped
#   some of them (section 6). Run a study twice before reading a sign.
# * A pooled correlation over checkpoints mixes time with layers: read it with the within-checkpoint and per-layer
#   correlations, and with intervals that resample layers, not points.
# * Where the paper's checkpoints sit changes its pooled number: spread over the run they add the time trend that
#   decay and training share; bunched at the end they leave mostly the differences between layers (section 5).

# %% [markdown]
# ## Exercises
#
# Checked solutions: [solutions/06_solutions.ipynb](solutions/06_solutions.ipynb).
#
# 1. **The value matrices** *(about 10 minutes; no training, seconds to run in either profile)*. Repeat section 3's
#    table for the **value** matrices: `show(figure2.correlation_table(points, "v_lin", "even"))`. Does the mechanism
#    of section 4 predict their signs too? Check it run by run against the factor `c` of section 2's table. Hint:
#    compare the layers' row norms of query and value matrices in `mechanism`.
# 2. **Half the paper's decay for DoRA** *(about 7 minutes on 2 cores in either profile: one 600-step run)*. Predict,
#    then measure: DoRA at *half* the paper's decay strength. Run
#    ```python
#    figure2.PAPER_CUMULATIVE_DECAY["DoRA"] = 0.15
#    half = figure2.Condition("long_wd_0.15", figure2.LONG, "paper", methods=("DoRA",))
#    figure2.run_study(Path("my_study"), [half])
#    figure2.PAPER_CUMULATIVE_DECAY["DoRA"] = 0.3  # restore
#    mine = figure2.read_csv(Path("my_study") / figure2.POINTS_FILE)
#    show(figure2.correlation_table(mine, "q_lin", "late"))
#    ```
#    and compare its pooled row with section 5's `late` column for `long_wd_paper` and `long_wd_paper_m_exempt` (for
#    their other statistics at `late`: `show(figure2.correlation_table(points, "q_lin", "late"))`). (`run_study` skips a condition whose name it
#    already finds in the folder, so give each strength its own name.) In the quick profile the solution runs a
#    12-step version instead, in seconds: enough to check the arithmetic of `c`, not the correlations.
