# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# The study's training runs are made once by a command (about an hour and a half on a 2-core CPU; Ctrl-C keeps the
# finished runs and the same command resumes):
#
#     python -m lowrank.figure2 --out figures/
#
# It writes `figures/06_ablation_points.csv` (one row per layer, matrix, checkpoint and run), which this notebook
# reads; in every profile the notebook also re-runs a tiny version of one condition, so you see the machinery work.
#
# **Runtime on a 2-core laptop CPU:** about 1½ minutes in either profile (`LOWRANK_PROFILE=quick` or `full`);
# the study itself is not re-run here.

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
from lowrank.profile import REPOSITORY_FIGURES, current_profile, figure_path

profile = current_profile()
STUDY = REPOSITORY_FIGURES  # the committed study results
points = figure2.read_csv(STUDY / figure2.POINTS_FILE)
mechanism = figure2.read_csv(STUDY / figure2.MECHANISM_FILE)
runs = json.loads((STUDY / figure2.RUNS_FILE).read_text())
print(f"profile: {profile.name}; study: {len(runs)} runs, {len(points):,} points, "
      f"conditions {list(dict.fromkeys(r['condition'] for r in points))}")

# %% [markdown]
# ## 1. A first-order account of ΔM and ΔD
#
# Take one row `w` of a weight matrix (one output feature; notebook 03) and what training did to it. AdamW's
# *decoupled* weight decay multiplies the weight by `(1 − lr·λ)` at every step, whatever the gradient says; over a run
# that is a factor `c = Π(1 − lr_t·λ) ≈ exp(−λ·Σ lr_t)`. Write the trained row as `w_t = c·w + g`, where `g` is what
# the gradient steps added. Split `g` into its part along `w` (`g∥ = ⟨ŵ, g⟩`, with `ŵ = w/‖w‖`) and the rest (`g⊥`).
# To first order in the small quantities:
#
# $$\|w_t\| - \|w\| \;\approx\; \underbrace{(c-1)\,\|w\|}_{\text{decay}} \;+\; \underbrace{\langle \hat w, g\rangle}_{\text{gradient, radial}}
#   \;+\; \frac{\|g_\perp\|^2}{2c\|w\|}, \qquad
#   1-\cos(w_t, w) \;\approx\; \frac{\|g_\perp\|^2}{2\,\|c\,w + g_\parallel\|^2} \;\approx\; \frac{\|g_\perp\|^2}{2c^2\|w\|^2}.$$
#
# Two consequences, before any experiment:
#
# * **Decay moves magnitude in proportion to the norm, and never moves direction.** Its share of ΔM is
#   `(1 − c)·‖w‖`: rows (and layers) with larger norms lose more.
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
#   that takes tens of thousands of steps at lr 1e-4. A larger learning rate is the other route, but FT of this model
#   at lr 1e-3 lost its accuracy in a pilot run (we kept 3e-4, at which notebook 04's FT reached 89.9 %).
# * **Weight decay.** `wd0`: none. `wd_paper`: the official code's grouping at the paper's *cumulative* strength.
#   Decay's effect depends only on `λ·Σ lr_t` (section 1). The paper: λ = 0.01, 20 epochs at batch 500 over VQAv2, GQA,
#   NLVR2 and COCO captions — we estimate 1.2 to 2.2 million examples an epoch, so 50,000 to 90,000 steps — with a
#   linear schedule whose mean multiplier is about 0.5: `λ·Σlr ≈ 0.01 × 1e-4 × 0.5 × (5 to 9)·10⁴ ≈ 0.025 to 0.045` for
#   FT and ten times that for the adapters (lr 1e-3). We take 0.03 and 0.3 and set λ per run so that its own
#   `λ·Σ lr_t` equals them.
# * **DoRA's magnitude exempt from decay** (`wd_paper_m_exempt`): the same, but `m` is not decayed.
# * **Where the four plotted checkpoints sit** (no new runs): `even` (3, 6, 9, 12 of twelve) or `late` (9–12).
# * **The statistic**: pooled over all points (the paper's number), within checkpoints (across layers, the time trend
#   removed), per layer over time; Pearson and Spearman; 95 % intervals from resampling whole layers (the four
#   checkpoints of one layer are not independent points).

# %%
print(f"{'condition':<24}{'method':<6}{'steps':>6}{'lr':>8}{'λ':>9}{'λ·Σlr':>8}{'c (row norms)':>15}"
      f"{'test acc':>10}{'s/step':>8}")
for key, run in runs.items():
    print(f"{run['condition']:<24}{run['method']:<6}{run['steps']:>6}{run['lr']:>8.0e}{run['weight_decay']:>9.3g}"
          f"{run['cumulative_decay']:>8.2f}{run['row_norm_decay_factor']:>15.3f}{run['test_accuracy']:>10.1%}"
          f"{run['seconds_per_step']:>8.2f}")

# %% [markdown]
# The same machinery, live: a 12-step version of one condition (DoRA with the paper's decay), written to a
# temporary folder. Its points are far too few to mean anything; they show what one run records.

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
    print(f"{'condition':<24}{'method':<6}{'statistic':<20}{'Pearson [95% CI]':<24}{'Spearman [95% CI]':<24}{'paper':>6}")
    for (condition, method, statistic) in dict.fromkeys((r["condition"], r["method"], r["statistic"]) for r in table):
        if statistic not in statistics:
            continue
        cells = {r["kind"]: r for r in table
                 if (r["condition"], r["method"], r["statistic"]) == (condition, method, statistic)}
        text = [f"{cells[k]['value']:+.2f} [{cells[k]['low']:+.2f}, {cells[k]['high']:+.2f}]" for k in ("pearson", "spearman")]
        paper = f"{figure2.PAPER_CORRELATIONS[method]:+.2f}" if statistic == "pooled" else ""
        print(f"{condition:<24}{method:<6}{statistic:<20}{text[0]:<24}{text[1]:<24}{paper:>6}")


query_table = figure2.correlation_table(points, "q_lin", "even", samples=1000)
show(query_table)
with open(figure_path("06_ablation_correlations.csv"), "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(query_table[0]))
    writer.writeheader()
    writer.writerows(query_table)

# %% [markdown]
# The figure for the long regime without and with the paper's decay (query matrices, `even` placement), drawn as the
# paper draws it: x = ΔD, y = ΔM, a colour per layer, a marker per checkpoint.

# %%
fig = figure2.plot_study(points, ["long_wd0", "long_wd_paper"], "q_lin", "even", figure_path("06_ablation_query.png"))
plt.show()

# %% [markdown]
# ## 4. The mechanism, measured
#
# For every run, layer and checkpoint the study also recorded the split of section 1 (`06_ablation_mechanism.csv`):
# the mean row-norm change, measured and predicted, and its decay and gradient parts. At the last checkpoint, query
# and value matrices together (12 matrices per run):

# %%
# NBVAL_CHECK_OUTPUT
def last_step_rows(condition, method):
    rows = [r for r in mechanism if r["condition"] == condition and r["method"] == method]
    last = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == last]


print(f"{'condition':<24}{'method':<6}{'ΔM (signed)':>12}{'predicted':>10}{'decay':>9}{'gradient':>10}"
      f"{'decay share':>12}{'ΔD':>10}{'ΔD pred.':>10}")
for key, run in runs.items():
    rows = last_step_rows(run["condition"], run["method"])
    mean = {k: np.mean([r[k] for r in rows]) for k in ("dm_signed", "dm_decay", "dm_gradient", "dm_second_order",
                                                       "dd_measured", "dd_first_order")}
    share = np.mean([abs(r["dm_decay"]) / (abs(r["dm_decay"]) + abs(r["dm_gradient"]) + abs(r["dm_second_order"]))
                     for r in rows])
    predicted = mean["dm_decay"] + mean["dm_gradient"] + mean["dm_second_order"]
    print(f"{run['condition']:<24}{run['method']:<6}{mean['dm_signed']:>+12.4f}{predicted:>+10.4f}"
          f"{mean['dm_decay']:>+9.4f}{mean['dm_gradient']:>+10.4f}{share:>12.0%}{mean['dd_measured']:>10.2e}"
          f"{mean['dd_first_order']:>10.2e}")

# %% [markdown]
# And the prediction of section 1 across layers: at the last checkpoint, does ΔM rise with the layer's mean row norm
# (decay's signature) and ΔD fall with it? Rank correlations over the six layers, per matrix type:

# %%
# NBVAL_CHECK_OUTPUT
from lowrank.magnitude_direction import spearman

print(f"{'condition':<24}{'method':<6}{'matrices':<9}{'ρ(norm, ΔM)':>12}{'ρ(norm, ΔD)':>12}{'ρ(ΔD, ΔM)':>11}")
for key, run in runs.items():
    rows = last_step_rows(run["condition"], run["method"])
    for suffix, label in (("q_lin", "query"), ("v_lin", "value")):
        chosen = sorted((r for r in rows if r["module"].endswith(suffix)), key=lambda r: r["layer"])
        norm = [r["row_norm"] for r in chosen]
        dm = [abs(r["dm_signed"]) for r in chosen]
        dd = [r["dd_measured"] for r in chosen]
        print(f"{run['condition']:<24}{run['method']:<6}{label:<9}{spearman(norm, dm):>+12.2f}{spearman(norm, dd):>+12.2f}"
              f"{spearman(dd, dm):>+11.2f}")

# %% [markdown]
# ## 5. Where the checkpoints sit
#
# The paper plots three intermediate steps and the final one without saying where the intermediate steps are. Pooled
# Pearson on the query matrices with the four checkpoints spread over the run (`even`) or bunched at its end (`late`):

# %%
# NBVAL_CHECK_OUTPUT
late_table = figure2.correlation_table(points, "q_lin", "late", samples=1000)
print(f"{'condition':<24}{'method':<6}{'even':>8}{'late':>8}{'paper':>8}")
for (condition, method) in dict.fromkeys((r["condition"], r["method"]) for r in query_table):
    value = {name: next(r["value"] for r in table if (r["condition"], r["method"], r["statistic"], r["kind"]) ==
                        (condition, method, "pooled", "pearson"))
             for name, table in (("even", query_table), ("late", late_table))}
    print(f"{condition:<24}{method:<6}{value['even']:>+8.2f}{value['late']:>+8.2f}{figure2.PAPER_CORRELATIONS[method]:>+8.2f}")

# %% [markdown]
# ## 6. What produces the paper's pattern here, and what does not
#
# FINDINGS_PLACEHOLDER

# %% [markdown]
# ## Exercise
#
# 1. *(5 minutes, no training)* Repeat section 3's table for the **value** matrices
#    (`figure2.correlation_table(points, "v_lin", "even")`). Does the mechanism of section 4 predict their signs too?
#    Hint: compare the layers' row norms of query and value matrices in `mechanism`.
# 2. *(about 15 minutes on 2 cores)* Predict, then measure: DoRA's pooled correlation when its magnitude is decayed
#    at *half* the paper's strength. Copy a condition (`figure2.Condition("long_wd_half", figure2.LONG, "paper",
#    methods=("DoRA",))`), set `figure2.PAPER_CUMULATIVE_DECAY["DoRA"] = 0.15`, and run
#    `figure2.run_study(Path("my_study"), [condition])`.
