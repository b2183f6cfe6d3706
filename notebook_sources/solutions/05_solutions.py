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
# # Solutions — notebook 06, when does the slope turn negative?
#
# Try each exercise before reading its solution. Every solution checks its answer with an `assert`.
#
# **Runtime on a 2-core laptop CPU:** exercise 1 reads the committed study (seconds). Exercise 2 trains: with
# `LOWRANK_PROFILE=quick` a 12-step version (seconds), with `full` the study's long regime (about 7 minutes).

# %%
# The profile: None keeps $LOWRANK_PROFILE (default "full"); set "quick" for a fast pass, then run from the top.
import os

PROFILE = None
if PROFILE:
    os.environ["LOWRANK_PROFILE"] = PROFILE

# %%
import json
import math
import tempfile
from pathlib import Path

import datasets
import numpy as np

from lowrank import figure2
from lowrank.settings import REPOSITORY_FIGURES, current_profile

profile = current_profile()
datasets.disable_progress_bars()  # keep the tokenizer's progress bars out of the solutions' outputs
points = figure2.read_csv(REPOSITORY_FIGURES / figure2.POINTS_FILE)
mechanism = figure2.read_csv(REPOSITORY_FIGURES / figure2.MECHANISM_FILE)
runs = json.loads((REPOSITORY_FIGURES / figure2.RUNS_FILE).read_text())
print(f"profile: {profile.name}; the committed study: {len(runs)} runs, {len(points):,} points")

# %% [markdown]
# ## Exercise 1 — The value matrices
#
# *Repeat section 3's table for the value matrices. Does the mechanism of section 4 predict their signs too?*
#
# Section 1's account predicts a negative slope across layers wherever decay shrinks the parameter that
# carries the row norms (FT's weight, DoRA's magnitude: `c < 1` in the runs table) and a positive one
# elsewhere. The within-checkpoint correlation is the statistic that reads "across layers" (the time trend
# removed). The prediction is about the value matrices just as much as the query ones: check it on every run.

# %%
value_table = figure2.correlation_table(points, "v_lin", "even", samples=1000)
within = {(r["condition"], r["method"]): r for r in value_table
          if r["statistic"] == "within checkpoints" and r["kind"] == "pearson"}
print(f"{'condition':<24}{'method':<7}{'c':>7}  {'within checkpoints [95% CI]':<28}{'predicted sign':>15}")
agree = []
for key, run in runs.items():
    row = within[(run["condition"], run["method"])]
    predicted = "negative" if run["row_norm_decay_factor"] < 1 else "positive"
    agree.append((row["value"] < 0) == (predicted == "negative"))
    print(f"{run['condition']:<24}{run['method']:<7}{run['row_norm_decay_factor']:>7.3f}  "
          f"{row['value']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]{'':<8}{predicted:>15}")
print(f"the sign agrees with the prediction in {sum(agree)} of {len(agree)} runs")
assert all(agree)

# %% [markdown]
# The hint: decay's signature is "ΔM grows with the row norm", so it shows more clearly where the layers' row
# norms differ more. The mean row norm of each layer's pretrained matrices, from the mechanism file:

# %%
first_run = next(iter(runs.values()))
last = max(r["step"] for r in mechanism if (r["condition"], r["method"]) == (first_run["condition"], first_run["method"]))
norms = {suffix: [r["row_norm"] for r in sorted(mechanism, key=lambda r: r["layer"])
                  if (r["condition"], r["method"], r["step"]) == (first_run["condition"], first_run["method"], last)
                  and r["module"].endswith(suffix)] for suffix in ("q_lin", "v_lin")}
for suffix, values in norms.items():
    print(f"{suffix}: mean row norm per layer {[round(v, 2) for v in values]}; largest / smallest "
          f"{max(values) / min(values):.2f}")
assert len(norms["q_lin"]) == len(norms["v_lin"]) == 6

# %% [markdown]
# ## Exercise 2 — Half the paper's decay for DoRA
#
# *Predict, then measure: DoRA at half the paper's cumulative decay (`λ·Σlr = 0.15` instead of 0.3).*
#
# **Prediction.** The row norms then shrink by `c ≈ exp(−0.15) ≈ 0.86` instead of `exp(−0.3) ≈ 0.74`, so decay's
# part of ΔM, `(1 − c)·‖w‖`, is a bit over half as large; the gradient's part does not change much. In the
# `full` profile this runs the long regime, as in the exercise; in `quick` a 12-step regime with batches of 4,
# which checks the arithmetic, not the correlations.

# %%
quick = profile.name == "quick"
regime = figure2.Regime("tiny", steps=12, batch_size=4, lr={"DoRA": 1e-3}) if quick else figure2.LONG
sizes = dict(train_size=64, eval_size=64) if quick else {}
half = figure2.Condition(f"{regime.name}_wd_0.15", regime, "paper", methods=("DoRA",))
scratch = Path(tempfile.mkdtemp(prefix="lowrank-half-decay-"))
paper_strength = figure2.PAPER_CUMULATIVE_DECAY["DoRA"]
figure2.PAPER_CUMULATIVE_DECAY["DoRA"] = paper_strength / 2
try:
    records = figure2.run_study(scratch, [half], progress=False, **sizes)
finally:
    figure2.PAPER_CUMULATIVE_DECAY["DoRA"] = paper_strength  # restore the module's constant
record = records[f"{half.name}/DoRA"]
mine = figure2.read_csv(scratch / figure2.MECHANISM_FILE)
last_rows = [r for r in mine if r["step"] == max(x["step"] for x in mine)]
share = np.mean([abs(r["dm_decay"]) / (abs(r["dm_decay"]) + abs(r["dm_gradient"]) + abs(r["dm_second_order"]))
                 for r in last_rows])
print(f"λ·Σlr = {record.cumulative_decay:.3f}: c = {record.row_norm_decay_factor:.3f} "
      f"(exp(-0.15) = {math.exp(-0.15):.3f}; the study's runs at 0.3 recorded c = "
      f"{runs['long_wd_paper/DoRA']['row_norm_decay_factor']:.3f}); decay's share of the signed ΔM: {share:.0%}")
assert abs(record.cumulative_decay - 0.15) < 1e-9 and abs(record.row_norm_decay_factor - math.exp(-0.15)) < 0.01

# %% [markdown]
# With `LOWRANK_PROFILE=full`, compare the correlations of the new run with `long_wd_paper` (0.3) and
# `long_wd_paper_m_exempt` (no decay of `m`) in notebook 06's tables:

# %%
mine_points = figure2.read_csv(scratch / figure2.POINTS_FILE)
for r in figure2.correlation_table(mine_points, "q_lin", "late", samples=1000):
    if r["kind"] == "pearson":
        print(f"{r['condition']:<22}{r['method']:<6}{r['statistic']:<20}{r['value']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]")
