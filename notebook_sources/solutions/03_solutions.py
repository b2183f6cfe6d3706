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
# # Solutions — notebook 03, DoRA: magnitude and direction
#
# Try each exercise before reading its solution. Every solution checks its answer with an `assert`, and each runs at
# the same size in both profiles: exercise 1 trains one 64×64 layer for 300 steps per target and layer, exercise 2
# counts the parameters of the real backbone and exercise 3 reads PEFT's magnitude on its `ffn.lin1`. The last line of
# each exercise prints how long its code took.

# %%
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

import lowrank
from lowrank.notebook import setup_notebook

setup = setup_notebook(profile=None)  # None: $LOWRANK_PROFILE (default "full"); the sizes here do not depend on it
model, tokenizer = lowrank.load_backbone(setup.backbone)


# %% [markdown]
# ## Exercise 1 — DoRA with the seed article's `dim=0` norm
#
# *Write `ColumnDoRALinear`: DoRA with the norm taken over `dim=0` of the `[out, in]` weight, as the seed
# article does. Train it and `lowrank.DoRALinear` on two regression tasks: a target that rescales each
# **output** feature of a layer, and one that rescales each **input** feature. What can each layer learn?*
#
# Both layers start at the base layer and have rank-4 LoRA directions. The targets are exactly reachable
# by rescaling alone: `diag(d)·W` (outputs) and `W·diag(d)` (inputs), with `d` drawn uniformly from `[0.5, 1.5)`.
# Neither is reachable by a rank-4 update of the direction, since `(diag(d) − I)·W` has full rank.

# %%
class ColumnDoRALinear(nn.Module):
    """DoRA with the seed article's axis: m = ||W0||_dim0, one entry per *input* feature, shape [1, in]."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.magnitude = nn.Parameter(base.weight.detach().norm(p=2, dim=0, keepdim=True))

    def merged_weight(self) -> torch.Tensor:
        V = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        return self.magnitude * V / V.norm(p=2, dim=0, keepdim=True).detach()

    def forward(self, x):
        return F.linear(x, self.merged_weight(), self.base.bias)


def final_loss(layer: nn.Module, target, steps: int = 300, seed: int = 0) -> float:
    """Adam (lr 1e-2) on fresh random inputs each step; the loss on new inputs at the end."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        x = torch.randn(128, 64)
        loss = F.mse_loss(layer(x), target(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        x = torch.randn(1024, 64)
        return F.mse_loss(layer(x), target(x)).item()


started = time.perf_counter()
torch.manual_seed(0)
base = nn.Linear(64, 64).requires_grad_(False)
d = 0.5 + torch.rand(64)
targets = {"rescale each output": lambda x: F.linear(x, d[:, None] * base.weight, base.bias),
           "rescale each input": lambda x: F.linear(x, base.weight * d[None, :], base.bias)}
losses = {}
print(f"{'target':>20} {'at the start':>13} {'DoRA (rows)':>12} {'seed (columns)':>15}")
for name, target in targets.items():
    with torch.no_grad():
        x = torch.randn(1024, 64)
        start = F.mse_loss(base(x), target(x)).item()
    losses[name] = {"start": start,
                    "rows": final_loss(lowrank.DoRALinear(copy.deepcopy(base), rank=4, alpha=4), target),
                    "columns": final_loss(ColumnDoRALinear(copy.deepcopy(base), rank=4, alpha=4), target)}
    print(f"{name:>20} {start:>13.2e} {losses[name]['rows']:>12.2e} {losses[name]['columns']:>15.2e}")
out, inp = losses["rescale each output"], losses["rescale each input"]
assert out["rows"] < 1e-3 * out["start"] and out["columns"] > 0.3 * out["start"]
assert inp["columns"] < 1e-3 * inp["start"] and inp["rows"] > 0.3 * inp["start"]
print(f"exercise 1 took {time.perf_counter() - started:.0f} s")

# %% [markdown]
# Each magnitude learns the rescaling along its own axis, to float rounding; on the other axis the loss stays of
# the order it started at (compare each row's three columns above). DoRA's
# magnitude (rows, `dim=1`) sets the length of each **output** neuron's weight vector — the quantity the
# paper's ΔM measures and its Figure 2 plots. The seed's `dim=0` magnitude rescales **inputs** instead: it
# trains without an error, reaches a loss, and learns a different model. On DistilBERT's non-square
# `ffn.lin1` it even has a different number of entries, and still no error:

# %%
lin1 = copy.deepcopy(model.distilbert.transformer.layer[0].ffn.lin1)
seed_style, paper_style = ColumnDoRALinear(copy.deepcopy(lin1), 8, 16), lowrank.DoRALinear(copy.deepcopy(lin1), 8, 16)
x = torch.randn(2, 5, lin1.in_features)
print(f"lin1 weight {tuple(lin1.weight.shape)}: seed's m {tuple(seed_style.magnitude.shape)}, DoRA's m "
      f"{tuple(paper_style.magnitude.shape)}; both run: {seed_style(x).shape == paper_style(x).shape}")
assert seed_style.magnitude.numel() == lin1.in_features and paper_style.magnitude.numel() == lin1.out_features

# %% [markdown]
# ## Exercise 2 — How many parameters does the magnitude add?
#
# *Predict how many trainable parameters DoRA adds to LoRA (same rank) with adapters on the query and value
# projections, and with adapters on every linear layer. Check with `lowrank.count_parameters`.*
#
# One magnitude entry per output feature of every adapted layer: `q_lin` and `v_lin` have 384 outputs each,
# in 6 layers; adding `k_lin` and `out_lin` (384), `lin1` (1536) and `lin2` (384) gives the rest.

# %%
started = time.perf_counter()
predicted = {"query, value": 6 * (384 + 384), "all linear layers": 6 * (4 * 384 + 1536 + 384)}
chosen = {"query, value": ["q_lin", "v_lin"],
          "all linear layers": lowrank.targets_from_toggles(key=True, projection=True, mlp=True)}
for label, targets_ in chosen.items():
    counts = {method: lowrank.count_parameters(lowrank.add_adapters(copy.deepcopy(model), targets_, method=method,
                                                                    rank=8, alpha=16)).trainable
              for method in ("lora", "dora")}
    extra = counts["dora"] - counts["lora"]
    print(f"{label:>18}: LoRA {counts['lora']:,}, DoRA {counts['dora']:,}: +{extra:,} (predicted +{predicted[label]:,})")
    assert extra == predicted[label]
print(f"exercise 2 took {time.perf_counter() - started:.0f} s")

# %% [markdown]
# A few percent on top of LoRA's trainable count (compare the printed totals): the magnitude is almost free in
# parameters.
# Its cost is elsewhere: the norm of `V` at every forward, and in training what autograd keeps for it (notebook 03,
# section 3).
#
# ## Exercise 3 — Does PEFT agree on the axis?
#
# *Put PEFT's DoRA (`LoraConfig(use_dora=True)`) on the non-square `ffn.lin1` and compare its magnitude
# vector with the row norms of the pretrained weight.*

# %%
from peft import LoraConfig, get_peft_model

started = time.perf_counter()
peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=["lin1"], use_dora=True))
peft_lin1 = peft_model.base_model.model.distilbert.transformer.layer[0].ffn.lin1
peft_m = peft_lin1.lora_magnitude_vector["default"].weight.detach()
W = lin1.weight.detach()
print(f"PEFT's magnitude: shape {tuple(peft_m.shape)}; equals the row norms ||W[j, :]|| (dim=1): "
      f"{torch.allclose(peft_m, W.norm(dim=1))}; the column norms have shape {tuple(W.norm(dim=0).shape)}")
assert peft_m.shape == (lin1.out_features,) and torch.allclose(peft_m, W.norm(dim=1), atol=1e-6)
print(f"exercise 3 took {time.perf_counter() - started:.1f} s")

# %% [markdown]
# PEFT, like the paper's official code and `lowrank.DoRALinear`, keeps one magnitude per output feature
# (`dim=1` of `nn.Linear.weight`).
