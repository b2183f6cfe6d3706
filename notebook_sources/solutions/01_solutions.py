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
# # Solutions — notebook 01, LoRA from scratch
#
# Try each exercise before reading its solution. Every solution checks its own answer with an `assert`, so
# this notebook fails loudly (and the course's tests with it) if an answer stops being true.
#
# The exercises train single layers, not the backbone, so nothing here depends on the profile.

# %%
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import lowrank
from lowrank.notebook import setup_notebook

setup = setup_notebook(profile=None)  # None: $LOWRANK_PROFILE (default "full"); nothing here depends on it

# %% [markdown]
# ## Exercise 1 — rsLoRA as a layer
#
# *Write `RsLoRALinear`, a `lowrank.LoRALinear` whose update is scaled by `α/√r` (Kalajdzievski, 2023). Check
# it against PEFT's `LoraConfig(use_rslora=True)`, then measure the first AdamW step across ranks as in
# section 3 of notebook 01.*
#
# The only change is the scaling, so the subclass sets one attribute. PEFT is given our factors, so both
# must compute the same output, to float rounding.

# %%
from peft import LoraConfig, get_peft_model


class RsLoRALinear(lowrank.LoRALinear):
    """LoRA with the rank-stabilised scaling alpha / sqrt(rank)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base, rank, alpha, dropout)
        self.scaling = self.alpha / math.sqrt(rank)


torch.manual_seed(0)
toy = nn.Sequential()
toy.add_module("proj", nn.Linear(384, 384))
theirs = get_peft_model(copy.deepcopy(toy), LoraConfig(r=16, lora_alpha=16, target_modules=["proj"], use_rslora=True))
peft_layer = theirs.base_model.model.proj
mine = RsLoRALinear(copy.deepcopy(toy.proj), rank=16, alpha=16)
with torch.no_grad():
    mine.lora_B.normal_(std=0.05)  # as after some training: B = 0 would hide a wrong scaling
    peft_layer.lora_A["default"].weight.copy_(mine.lora_A)
    peft_layer.lora_B["default"].weight.copy_(mine.lora_B)
x = torch.randn(8, 384)
print("scaling, ours and PEFT's:", mine.scaling, peft_layer.scaling["default"])
print("same output as PEFT:", torch.allclose(mine(x), theirs(x), atol=1e-6))
assert mine.scaling == peft_layer.scaling["default"] == 16 / math.sqrt(16)
assert torch.allclose(mine(x), theirs(x), atol=1e-6)


# %% [markdown]
# Now the first step, with the same measurement as notebook 01 (one AdamW step at `lr=1e-3` on a fixed
# regression task, `‖ΔW‖/‖W‖`), for the plain layer (`α/r`) and ours (`α/√r`):

# %%
def first_step_update_norm(layer_class, rank: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    layer = layer_class(nn.Linear(384, 384), rank=rank, alpha=16)
    optimizer = torch.optim.AdamW(layer.adapter_parameters(), lr=1e-3)
    x, target = torch.randn(64, 384), torch.randn(64, 384)
    F.mse_loss(layer(x), target).backward()
    optimizer.step()
    return (layer.low_rank_update().norm() / layer.base.weight.norm()).item()


rank_grid = [1, 2, 4, 8, 16, 32, 64]
growth = {}
for layer_class in (lowrank.LoRALinear, RsLoRALinear):
    sizes = [first_step_update_norm(layer_class, r) for r in rank_grid]
    growth[layer_class.__name__] = sizes[-1] / sizes[0]
    print(f"{layer_class.__name__:>13}: " + "  ".join(f"r={r}: {s:.1e}" for r, s in zip(rank_grid, sizes)))
print({name: f"r=1 -> r=64: x{g:.2f}" for name, g in growth.items()})
assert 0.7 < growth["RsLoRALinear"] < 1.4, "rsLoRA's first step should not depend much on the rank"
assert growth["LoRALinear"] < 0.25, "alpha/r makes the first step shrink as the rank grows"

# %% [markdown]
# With `α/√r` the first step is about the same size at every rank (the printed ratios); with `α/r` it shrinks like
# `1/√r`. rsLoRA's paper (arXiv:2312.03732) argues that `α/r` slows learning at larger ranks, so that raising the
# rank of plain LoRA buys less than it could. To train the backbone with it,
# set `layer.scaling = layer.alpha / math.sqrt(layer.rank)` on every layer of `lowrank.adapter_layers(model)`;
# PEFT needs `use_rslora=True` in the configuration (`lowrank.export_peft` and `lowrank.import_peft` carry it as
# the `alpha/sqrt(rank)` scaling rule).
#
# ## Exercise 2 — Zero the other factor
#
# *The seed article's text zeroes `A` and draws `B` at random. Build that layer, check that it also starts at
# the base layer, and find out which factor receives a gradient at step 0 in each convention.*

# %%
def gradients_at_step_0(zero: str) -> dict:
    torch.manual_seed(0)
    layer = lowrank.LoRALinear(nn.Linear(384, 384), rank=8, alpha=16)   # PEFT's convention: B = 0, A random
    if zero == "A":                                                       # the seed article's text: A = 0, B random
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn_like(layer.lora_B) / math.sqrt(layer.rank))
            layer.lora_A.zero_()
    x, target = torch.randn(64, 384), torch.randn(64, 384)
    starts_at_base = torch.equal(layer(x), layer.base(x))
    F.mse_loss(layer(x), target).backward()
    return {"starts at the base layer": starts_at_base,
            "A gets a gradient": bool(layer.lora_A.grad.abs().max() > 0),
            "B gets a gradient": bool(layer.lora_B.grad.abs().max() > 0)}


results = {zero: gradients_at_step_0(zero) for zero in ("B", "A")}
for zero, result in results.items():
    print(f"{zero} = 0: {result}")
assert results["B"] == {"starts at the base layer": True, "A gets a gradient": False, "B gets a gradient": True}
assert results["A"] == {"starts at the base layer": True, "A gets a gradient": True, "B gets a gradient": False}

# %% [markdown]
# Both start exactly at the pretrained layer; in each, only the factor opposite the zero one moves at the
# first step (`∂L/∂B ∝ (A x)` vanishes when `A = 0`, `∂L/∂A ∝ Bᵀ g` when `B = 0`). So the two are not the
# same training: Hayou et al. (2024, "The Impact of Initialization on LoRA Finetuning Dynamics") compare them
# and find that "the first scheme (initializing B to zero and A to random) on average yields better performance
# compared to the other scheme"; their analysis suggests the reason "might be that the first initialization
# allows the use of larger learning rates (without causing output instability)".
#
# ## Exercise 3 — The rank of what LoRA learns
#
# *Train a rank-4 `LoRALinear` and a plain `nn.Linear` (full fine-tuning) on the same regression task (a random
# teacher layer) for 20 AdamW steps. What is the rank of each update `ΔW`? How much of each does
# `energy_captured` (notebook 01) keep at rank 4?*

# %%
def energy_captured(matrix: torch.Tensor) -> torch.Tensor:
    """Fraction of ||M||_F^2 kept by the best rank-r approximation, for r = 1 .. min(shape)."""
    singular = torch.linalg.svdvals(matrix.double())
    return (singular.square().cumsum(0) / singular.square().sum()).float()


torch.manual_seed(0)
lora = lowrank.LoRALinear(nn.Linear(384, 384), rank=4, alpha=8)
full = copy.deepcopy(lora.base).requires_grad_(True)
W0 = full.weight.detach().clone()
teacher = nn.Linear(384, 384).requires_grad_(False)
optimizers = {lora: torch.optim.AdamW(lora.adapter_parameters(), lr=1e-3),
              full: torch.optim.AdamW(full.parameters(), lr=1e-3)}
for step in range(20):
    x = torch.randn(64, 384)
    for layer, optimizer in optimizers.items():
        optimizer.zero_grad()
        F.mse_loss(layer(x), teacher(x)).backward()
        optimizer.step()

updates = {"LoRA r=4": lora.low_rank_update().detach(), "full fine-tune": full.weight.detach() - W0}
for label, update in updates.items():
    energy = energy_captured(update)
    print(f"{label:>14}: rank {torch.linalg.matrix_rank(update).item():>3}; rank 4 keeps {energy[3]:.0%} "
          f"of ||ΔW||², rank 32 keeps {energy[31]:.0%}")
assert torch.linalg.matrix_rank(updates["LoRA r=4"]).item() == 4
assert torch.linalg.matrix_rank(updates["full fine-tune"]).item() > 4

# %% [markdown]
# LoRA's update has rank 4 by construction (`B·A` has 4 columns and rows), however long it trains. The full
# fine-tune's update has full rank, and here, where the teacher is a random full-rank matrix, its energy is
# spread over many directions (the percentages above). Notebook 01 measured the same thing on a pretrained
# model fine-tuned on a real task, where a few directions held far more of it: LoRA's bet is about
# fine-tuning pretrained models, not about any task.
