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
# # 04 — Magnitude versus direction: the DoRA paper's Figure 2
#
# The DoRA paper motivates its design with one plot: for each fine-tuning method, how much the weights changed in
# **magnitude** (ΔM) against how much they changed in **direction** (ΔD), per layer, at several checkpoints. It reports
# that full fine-tuning (FT) shows a *negative* correlation between the two (large direction changes come with small
# magnitude changes and vice versa), LoRA a *positive* one (both move together, "proportionally"), and DoRA a negative
# one like FT. The paper did not release the code for this analysis; here it is, run on this course's backbone.
#
# **Runtime on a 2-core laptop CPU:** about 1 minute (`LOWRANK_PROFILE=quick`), about 12 minutes (`full`), measured.

# %%
import copy
import csv

import matplotlib.pyplot as plt
import numpy as np
import torch

import lowrank
from lowrank.data import load_sentiment
from lowrank.magnitude_direction import (
    bootstrap_interval,
    change_points,
    magnitude_direction_change,
    merged_linear_weights,
    pearson,
    plot_change_points,
    points_as_rows,
)
from lowrank.profile import backbone_name, current_profile, dataset_name, default_device, figure_path
from lowrank.training import accuracy, seed_everything, tokenize, train

profile = current_profile()
device = default_device()
seed_everything(0)
print(f"profile: {profile.name}; backbone: {backbone_name()}; data: {dataset_name()}; device: {device}")

# %% [markdown]
# ## 1. ΔM and ΔD, exactly as the paper's eq. 3–4
#
# For one weight matrix at checkpoint `t`, compare the *merged* weight `W_t` (for LoRA/DoRA: `W0 + ΔW`) with the
# pretrained `W_0`, one output feature at a time (rows of PyTorch's `[out, in]` weight; notebook 03), and average over
# the `k = out_features` rows:
#
# $$\Delta M_t = \frac{1}{k}\sum_{n=1}^{k} \bigl|\,\lVert W_t[n]\rVert - \lVert W_0[n]\rVert\,\bigr|, \qquad
#   \Delta D_t = \frac{1}{k}\sum_{n=1}^{k} \bigl(1 - \cos(W_t[n], W_0[n])\bigr).$$
#
# A sanity check on synthetic changes: scaling each row changes ΔM only; rotating each row at a fixed norm
# changes ΔD only.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
W0 = torch.randn(64, 32)
scaled = W0 * (1 + 0.1 * torch.rand(64, 1))                       # same directions, new norms
noise = torch.randn(64, 32)
noise -= (noise * W0).sum(1, keepdim=True) / W0.square().sum(1, keepdim=True) * W0   # orthogonal to each row
rotated = W0 + 0.2 * noise * W0.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True)
rotated = rotated * (W0.norm(dim=1, keepdim=True) / rotated.norm(dim=1, keepdim=True))  # back to the old norms
synthetic = {label: magnitude_direction_change(changed, W0) for label, changed in [("rows scaled", scaled),
                                                                                     ("rows rotated", rotated)]}
for label, (dm, dd) in synthetic.items():
    print(f"{label:>12}: ΔM > 1e-4: {dm > 1e-4},  ΔD > 1e-4: {dd > 1e-4}")

# %%
for label, (dm, dd) in synthetic.items():
    print(f"{label:>12}: ΔM = {dm:.1e}, ΔD = {dd:.1e}")

# %% [markdown]
# ## 2. Fine-tune three ways and snapshot the weights
#
# Full fine-tuning, LoRA and DoRA (query and value adapters, r = 8, α = 16), the same data, order and number of steps.
# We snapshot the effective query and value matrices of all layers at three intermediate steps and the final step.

# %%
model, tokenizer = lowrank.load_backbone(backbone_name())
data = tokenize(load_sentiment(dataset_name(), train_size=profile.train_size, eval_size=profile.eval_size, seed=0),
                tokenizer, profile.max_length)
total_steps = profile.analysis_steps
snapshot_steps = [total_steps // 4, total_steps // 2, 3 * total_steps // 4, total_steps]
pattern = r"\.(q_lin|v_lin)$"
pretrained = merged_linear_weights(model, pattern)
methods = {"FT": dict(method=None, lr=1e-4), "LoRA": dict(method="lora", lr=2e-3), "DoRA": dict(method="dora", lr=2e-3)}
snapshots, accuracies = {}, {}
for label, spec in methods.items():
    candidate = copy.deepcopy(model).to(device)
    if spec["method"]:
        lowrank.add_adapters(candidate, ["q_lin", "v_lin"], method=spec["method"], rank=8, alpha=16)
    run = train(candidate, data["train"], max_steps=total_steps, batch_size=profile.batch_size, lr=spec["lr"],
                seed=0, snapshot_steps=snapshot_steps, snapshot=lambda m: merged_linear_weights(m, pattern),
                description=label)
    snapshots[label] = run.snapshots
    accuracies[label] = accuracy(candidate, data["test"])
    print(f"{label}: {total_steps} steps, test accuracy {accuracies[label]:.2%}, snapshots at {sorted(run.snapshots)}")


# %% [markdown]
# ## 3. The figure
#
# One panel per method, as in the paper: x = ΔD, y = ΔM, a colour per layer, a marker per checkpoint, a least-squares
# line, and the Pearson correlation of all the panel's points in its title.

# %%
def points_for(kind: str) -> dict:
    """ΔM/ΔD points of each method for the query ("q_lin") or value ("v_lin") matrices."""
    out = {}
    for label, steps in snapshots.items():
        chosen = {step: {n: w for n, w in weights.items() if n.endswith(kind)} for step, weights in steps.items()}
        out[label] = change_points(label, chosen, {n: w for n, w in pretrained.items() if n.endswith(kind)})
    return out


def figure(kind: str, title: str, path: str) -> dict:
    per_method = points_for(kind)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (label, points) in zip(axes, per_method.items()):
        _, handles = plot_change_points(points, ax=ax, title=label)
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.suptitle(f"{title}: magnitude vs direction change ({backbone_name()}, {dataset_name()}, {profile.name} profile)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=120)
    plt.show()
    return per_method


query_points = figure("q_lin", "Query matrices", figure_path("04_query_dm_dd.png"))

# %%
value_points = figure("v_lin", "Value matrices", figure_path("04_value_dm_dd.png"))

# %% [markdown]
# ## 4. This course's correlations next to the paper's
#
# The paper's numbers are for VL-BART query matrices (FT −0.62, LoRA +0.83, DoRA −0.31). Ours come from a different,
# much smaller model and task, so agreement in *sign* is the meaningful test. Each correlation gets a bootstrap 95 %
# interval: resampling the (layer, step) points with replacement, 2,000 times.

# %%
paper = {"FT": -0.62, "LoRA": 0.83, "DoRA": -0.31}
rows = []
print(f"{'matrices':>8} {'method':>6} {'points':>6} {'ours':>6} {'95% interval':>16} {'paper':>6}  same sign?")
for kind, per_method in [("query", query_points), ("value", value_points)]:
    for label, points in per_method.items():
        x, y = [p.delta_d for p in points], [p.delta_m for p in points]
        r = pearson(x, y)
        low, high = bootstrap_interval(x, y, seed=0)
        same = "yes" if np.sign(r) == np.sign(paper[label]) else "no"
        print(f"{kind:>8} {label:>6} {len(points):>6} {r:>+6.2f} [{low:+.2f}, {high:+.2f}]".ljust(46) +
              f"{paper[label]:>+6.2f}  {same if kind == 'query' else '(paper: query only)'}")
        rows.append({"matrices": kind, "method": label, "pearson": r, "low": low, "high": high})
with open(figure_path("04_points.csv"), "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=["method", "module", "layer", "step", "delta_m", "delta_d"])
    writer.writeheader()
    for per_method in (query_points, value_points):
        for points in per_method.values():
            writer.writerows(points_as_rows(points))

# %% [markdown]
# ### Is the correlation just training time?
#
# Every point of a panel mixes two sources of variation: *between checkpoints* (both ΔM and ΔD grow as training goes
# on, which by itself pushes the correlation towards +1) and *between layers at one checkpoint*. The paper's reading
# ("FT tends to make large direction changes with small magnitude changes") is about the second. So we also compute
# the correlation *within* checkpoints: subtract each checkpoint's mean ΔD and mean ΔM from its points, then correlate
# the residuals of all checkpoints together.

# %%
def within_step_correlation(points) -> float:
    steps = sorted({p.step for p in points})
    x, y = [], []
    for step in steps:
        chosen = [p for p in points if p.step == step]
        mean_d, mean_m = np.mean([p.delta_d for p in chosen]), np.mean([p.delta_m for p in chosen])
        x += [p.delta_d - mean_d for p in chosen]
        y += [p.delta_m - mean_m for p in chosen]
    return pearson(x, y)


print(f"{'matrices':>8} {'method':>6} {'all points':>11} {'within checkpoints':>19} {'paper':>6}")
for kind, per_method in [("query", query_points), ("value", value_points)]:
    for label, points in per_method.items():
        print(f"{kind:>8} {label:>6} {pearson([p.delta_d for p in points], [p.delta_m for p in points]):>+11.2f} "
              f"{within_step_correlation(points):>+19.2f} {paper[label]:>+6.2f}")

# %% [markdown]
# ### Does the sign depend on the learning rate or the seed?
#
# Full fine-tuning is where we disagree with the paper, so we repeat it: once with a 3× larger learning rate, once with
# another seed (another data order and head initialisation), the same number of steps, query matrices only.

# %%
query_only = r"\.q_lin$"
variants = {"FT, lr 1e-4, seed 0 (above)": (1e-4, 0), "FT, lr 3e-4, seed 0": (3e-4, 0), "FT, lr 1e-4, seed 1": (1e-4, 1)}
print(f"{'run':>28} {'test acc':>9} {'all points':>11} {'95% interval':>16} {'within checkpoints':>19}")
for label, (lr, seed) in variants.items():
    if seed == 0 and lr == 1e-4:
        points, acc = query_points["FT"], accuracies["FT"]
    else:
        seed_everything(seed)
        candidate, _ = lowrank.load_backbone(backbone_name(), seed=seed)
        candidate = candidate.to(device).requires_grad_(True)
        run = train(candidate, data["train"], max_steps=total_steps, batch_size=profile.batch_size, lr=lr, seed=seed,
                    snapshot_steps=snapshot_steps, snapshot=lambda m: merged_linear_weights(m, query_only),
                    description=label)
        points = change_points(label, run.snapshots, {n: w for n, w in pretrained.items() if n.endswith("q_lin")})
        acc = accuracy(candidate, data["test"])
    x, y = [p.delta_d for p in points], [p.delta_m for p in points]
    low, high = bootstrap_interval(x, y, seed=0)
    print(f"{label:>28} {acc:>9.2%} {pearson(x, y):>+11.2f} [{low:+.2f}, {high:+.2f}] {within_step_correlation(points):>+19.2f}")

# %% [markdown]
# ## 5. Reading it honestly
#
# See the table just above for what this run measured; the paragraph below describes the committed full-profile run.
#
# The committed full-profile run: 250 steps per method, the query and value matrices of all 6 layers at 4 checkpoints,
# 24 points per panel.
#
# * **LoRA agrees with the paper.** Magnitude and direction change in lockstep: r = +1.00 on the query matrices
#   (paper +0.83), +0.91 on the value matrices. This is the paper's central observation about LoRA, and it reproduces
#   cleanly.
# * **Full fine-tuning does not.** r = +0.90 [+0.81, +0.97] on the query matrices, where the paper reports −0.62.
#   The sign is not an accident of our run: it stays positive with a 3× larger learning rate (+0.88), with another
#   seed (+0.86), and within checkpoints (+0.75 to +0.92), so it is not just "everything grows with training time".
# * **DoRA sits in between.** r = +0.59 on the query matrices: clearly weaker than LoRA's lockstep — DoRA does let
#   magnitude and direction move more independently — but not negative like the paper's −0.31. On the value matrices
#   the overall correlation is +0.10 [−0.24, +0.39], and within checkpoints −0.78.
#
# What we did not reproduce, we report rather than tune away. Our setting differs from the paper's in every respect
# that could matter: a 22.7 M-parameter sentence-embedding model instead of VL-BART, one binary tweet task instead of
# multi-task vision-language training, 250 AdamW steps instead of full runs. In this short regime full fine-tuning
# moves each weight very little (ΔD ≈ 1e-4, a hundred times less than LoRA), and the layers that move most move most
# in both senses. Whether the paper's negative slope appears with longer training or larger models is a question this
# CPU course cannot settle; `python -m lowrank.analyze` (see the README) draws the same figure for your own
# checkpoints, so you can look.
