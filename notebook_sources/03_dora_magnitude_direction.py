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
# # 03 — DoRA: magnitude and direction
#
# Why another method? LoRA often trains a little worse than full fine-tuning. DoRA's authors (Liu et al., 2024,
# [arXiv:2402.09353](https://arxiv.org/abs/2402.09353)) split each weight row into its length (magnitude) and its
# unit vector (direction) and compared how full fine-tuning and LoRA change the two (notebook 04 redraws that
# analysis); in their abstract: "we first introduce a novel weight decomposition analysis to investigate the
# inherent differences between FT and LoRA. Aiming to resemble the learning capacity of FT from the findings, we
# propose Weight-Decomposed Low-Rank Adaptation (DoRA)." So DoRA lets magnitude and direction learn separately,
# closer to what full fine-tuning does.
#
# What the two parts mean, for one output feature `i` of a linear layer: its output is `yᵢ = wᵢ·x + bᵢ`, where `wᵢ`
# is row `i` of the weight. Write `wᵢ = ‖wᵢ‖·(wᵢ/‖wᵢ‖)`: the **direction** `wᵢ/‖wᵢ‖` decides which input pattern the
# feature responds to, the **magnitude** `‖wᵢ‖` how strongly. Under LoRA, both change only through the shared
# rank-`r` update `BA`. DoRA gives every output feature its own trainable length, one number per row: a feature can
# respond more or less strongly, with the same pattern, at the cost of that one number, and `BA` is left to change
# directions.
#
# DoRA splits every pretrained weight into a **magnitude** and a **direction**, trains the magnitude directly and
# the direction with LoRA:
#
# $$W' = m \odot \frac{W_0 + \tfrac{\alpha}{r} B A}{\lVert W_0 + \tfrac{\alpha}{r} B A \rVert}, \qquad m_0 = \lVert W_0 \rVert .$$
#
# Here `‖·‖` is one norm per output feature of the layer (section 1 settles which axis that is), and `α/r` is LoRA's
# scale from notebook 01, written `s` below. You will find out *which* norm the paper means (and run the DoRA code
# of the blog article this course grew out of, which takes the wrong one), write the layer yourself, measure what the
# paper's detached norm saves, check the layer against PEFT, train it against LoRA, and read the paper's gradient
# argument in code.
#
# About 9–14 min in the full profile on a 2-core CPU, with or without bf16 hardware, and 1 min in quick
# ([measured how, and at which speeds](../docs/runtimes.md)).
# To switch, set `profile="quick"` (or `"full"`) in the next cell and run from the top.

# %%
import copy
import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import lowrank
from lowrank.notebook import setup_notebook
from lowrank.settings import figure_path
from lowrank.training import batches, logits_accuracy, predict, seed_everything, train

setup = setup_notebook(profile=None, load=True)  # None: $LOWRANK_PROFILE (default "full"); "quick" for a live class
profile, device, model, tokenizer, data = setup.profile, setup.device, setup.model, setup.tokenizer, setup.data

# %% [markdown]
# ## 1. Which norm? The paper's columns are PyTorch's rows
#
# The paper writes `W ∈ R^{d×k}`, `m ∈ R^{1×k}`, with `‖·‖_c` "the vector-wise norm of a matrix across each column"
# (its eq. 2), without saying which side
# the input multiplies: the notation alone is ambiguous. Its first author settled it (nbasyl/DoRA issue #1: `W` there
# is `(in_features, out_features)`), and the official code takes `norm(dim=1)` of `nn.Linear.weight`: one norm per
# *output* feature. PyTorch's `nn.Linear.weight` is `[out, in]` and computes `x @ W.T`, so the paper's column `j` is
# PyTorch's **row** `j`: the norm is over `dim=1`, and `m` has one entry per output feature, shape `[out_features]`.
# The decomposition is exact:

# %%
# NBVAL_CHECK_OUTPUT
W = model.distilbert.transformer.layer[0].attention.q_lin.weight.detach()
magnitude = W.norm(p=2, dim=1)                      # [out]: one per output feature (row)
direction = W / magnitude[:, None]                  # unit-norm rows
print("weight", tuple(W.shape), "-> magnitude", tuple(magnitude.shape), "x direction", tuple(direction.shape))
print("rows of the direction have norm 1:", torch.allclose(direction.norm(dim=1), torch.ones(W.shape[0])))
print("m * V/||V|| reconstructs W exactly (max error < 1e-6):", (magnitude[:, None] * direction - W).abs().max().item() < 1e-6)

# %% [markdown]
# The seed article takes the norm over `dim=0` — per **input** column of PyTorch's weight. Nothing complains, on
# any shape: the `[1, in]` result broadcasts against `[out, in]`, and `m · W/‖W‖` still reconstructs `W`.
# But `m` now measures something else: the size of the weights *reading* each input feature, not the size of
# each output neuron's weight vector. Training it scales inputs, not the outputs DoRA is about. Row `j` and
# column `j` are unrelated (output neuron `j`, input feature `j`), so the two are compared as distributions, and
# by what scaling each one does to the layer's output.

# %%
wrong = W.norm(p=2, dim=0, keepdim=True)            # the seed article's m: [1, in]
print("seed article's m:", tuple(wrong.shape), "- reconstructs W too:",
      torch.allclose(wrong * (W / wrong), W, atol=1e-6))
for name, values in (("output-row norms (DoRA's m)", magnitude), ("input-column norms (seed's m)", wrong[0])):
    print(f"{name:>30}: {values.numel()} values, median {values.median():.2f}, range {values.min():.2f}-{values.max():.2f}")
# What each does to the output: doubling DoRA's m[0] doubles output feature 0 and nothing else;
# doubling the seed's m[0] doubles how much input feature 0 contributes to *every* output feature.
x_probe = torch.randn(4, W.shape[1])
row_scaled, column_scaled = W.clone(), W.clone()
row_scaled[0] *= 2
column_scaled[:, 0] *= 2
for name, scaled in (("DoRA's m[0] x2", row_scaled), ("seed's m[0] x2", column_scaled)):
    changed = ((x_probe @ scaled.T - x_probe @ W.T).abs() > 1e-6).any(0).sum().item()
    print(f"{name}: changes {changed} of {W.shape[0]} output features")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, values, title in ((axes[0], magnitude, "DoRA's m: one norm per output row"),
                          (axes[1], wrong[0], "seed's m: one norm per input column")):
    ax.hist(values.numpy(), bins=30)
    ax.set(xlabel="norm", title=title)
axes[0].set_ylabel("count")
fig.suptitle("Layer 0 q_lin: the two 'magnitudes' measure different things")
fig.tight_layout()
fig.savefig(figure_path("03_row_vs_column_norm.png"), dpi=120)
plt.show()


# %% [markdown]
# ### The seed article's DoRA layer, run as printed
#
# This course grew out of a short blog article, "LoRA和DoRA" ("LoRA and DoRA", in Chinese, by 张广益, 16 May 2024).
# Its `DoRALayer`, copied below exactly as printed, takes the norm over `dim=0`, the wrong axis shown above, and has
# more mistakes that are easy to copy. The next cell runs each one:
#
# 1. it uses `nn` and `F` without importing them (the article imports only `torch`), so it cannot run as printed;
# 2. it wraps `linear.bias` in `nn.Parameter`, which breaks on a layer without a bias;
# 3. its magnitude `m` is `[1, in]`: one entry per *input* feature, and it broadcasts silently on any shape;
# 4. the article sets `lora_dropout = 0.05`, but `DoRALayer` takes no dropout argument: no layer ever drops out.
#
# A fifth mistake is not an error at all: it differentiates through `column_norm` (no detach), which costs the
# memory that section 3 measures.

# %%
# NBVAL_CHECK_OUTPUT
import inspect

seed_dora_source = """
class DoRALayer(nn.Module):
    def __init__(self, linear, rank=4, alpha=8):
        super().__init__()
        self.weight = nn.Parameter(linear.weight, requires_grad=False)
        self.bias = nn.Parameter(linear.bias, requires_grad=False)
        self.m = nn.Parameter(self.weight.norm(p=2, dim=0, keepdim=True))
        self.alpha = alpha
        std_dev = 1 / torch.sqrt(torch.tensor(rank).float())
        self.lora_A = nn.Parameter(torch.randn(linear.out_features, rank)*std_dev)
        self.lora_B = nn.Parameter(torch.zeros(rank, linear.in_features))

    def forward(self, x):
        lora = self.alpha * torch.matmul(self.lora_A, self.lora_B)
        adapted = self.weight + lora
        column_norm = adapted.norm(p=2, dim=0, keepdim=True)
        norm_adapted = adapted / column_norm
        calc_weights = self.m * norm_adapted
        return F.linear(x, calc_weights, self.bias)
"""
namespace = {"torch": torch}  # what the article imports
try:
    exec(seed_dora_source, namespace)
except NameError as error:
    print("1. as printed:", type(error).__name__, "-", error)

namespace.update(nn=nn, F=F)  # add the missing imports and go on
exec(seed_dora_source, namespace)
SeedDoRALayer = namespace["DoRALayer"]
try:
    SeedDoRALayer(nn.Linear(6, 4, bias=False))(torch.randn(2, 6))  # nn.Parameter(None) builds, F.linear then fails
except RuntimeError as error:
    print("2. on a layer without bias:", type(error).__name__, "-", str(error).split(".")[0])

lin1 = model.distilbert.transformer.layer[0].ffn.lin1  # [1536, 384]: 1,536 output features
seed_lin1 = SeedDoRALayer(copy.deepcopy(lin1))
print(f"3. on ffn.lin1 {tuple(lin1.weight.shape)}: m has shape {tuple(seed_lin1.m.shape)} (DoRA's has "
      f"({lin1.out_features},)); it runs without an error: output {tuple(seed_lin1(torch.randn(2, 384)).shape)}")
print("4. DoRALayer's arguments:", list(inspect.signature(SeedDoRALayer.__init__).parameters)[1:],
      "- none for dropout")


# %% [markdown]
# ## 2. Build the layer
#
# First the formula as written, then the efficient form. Both start exactly at `W0`: `B = 0` makes `V = W0`,
# and `m = ‖W0‖` makes `m · V/‖V‖ = W0`.
#
# **The paper's §4.3 trick.** The gradient through `‖V‖` costs memory: autograd must keep the `[out, in]` matrix
# `V` for every adapted layer. The paper treats `‖V‖` as a constant in backprop (`.detach()`): the forward is
# unchanged, the gradient slightly different (section 7), and the memory smaller (section 3).

# %% [markdown]
# The layer in a picture, with layer 0's query projection sizes (orange trains, grey is frozen, blue is computed
# at every forward). The norm runs along each row of the `[out, in]` weight, one per output feature:

# %%
from lowrank.diagrams import dora_diagram

dora_diagram(in_features=W.shape[1], out_features=W.shape[0], rank=8, alpha=16, save_as="03_dora_layer.png")
plt.show()

# %%
class MyDoRALinear(nn.Module):
    """W' = m * V / ||V||_row with V = W0 + (alpha/rank) * B @ A; the norm is detached (paper 4.3) unless asked not to."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, detach_norm: bool = True):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.detach_norm = detach_norm
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.magnitude = nn.Parameter(base.weight.detach().norm(p=2, dim=1))   # [out], = ||W0|| per row

    def direction(self):
        return self.base.weight + self.scaling * self.lora_B @ self.lora_A     # V, [out, in]

    def direction_norm(self):
        if not self.detach_norm:
            return self.direction().norm(p=2, dim=1)                         # autograd keeps V to differentiate this
        with torch.no_grad():                                                # a constant: autograd keeps nothing here
            return self.direction().norm(p=2, dim=1)

    def forward_direct(self, x):
        """The formula as written: materialise W' and call F.linear."""
        weight = self.magnitude[:, None] * self.direction() / self.direction_norm()[:, None]
        return F.linear(x, weight, self.base.bias)

    def forward(self, x):
        """Same output without a weight that needs a gradient: g * (W0 x + s B A x) + b, g = m / ||V||."""
        gain = self.magnitude / self.direction_norm()
        lora = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        out = (F.linear(x, self.base.weight) + lora) * gain
        return out if self.base.bias is None else out + self.base.bias


# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
base = copy.deepcopy(model.distilbert.transformer.layer[0].attention.q_lin)
mine = MyDoRALinear(base, rank=8, alpha=16)
x = torch.randn(4, 10, base.in_features)
print("W' = W0 at step 0:", torch.allclose(mine(x), base(x), atol=1e-5))
with torch.no_grad():
    mine.lora_B.normal_(std=0.05)
    mine.magnitude.mul_(1.1)
fast_out, direct_out = mine(x), mine.forward_direct(x)
print("efficient forward equals the direct formula:", torch.allclose(fast_out, direct_out, atol=1e-5))
grads = []
for output in (fast_out, direct_out):
    mine.zero_grad()
    output.square().mean().backward()
    grads.append([p.grad.clone() for p in (mine.lora_A, mine.lora_B, mine.magnitude)])
print("and so are the gradients of A, B and m:",
      all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads)))
print("frozen weight has no gradient:", base.weight.grad is None)
reference = lowrank.DoRALinear(copy.deepcopy(base), rank=8, alpha=16)
with torch.no_grad():
    for name in ("lora_A", "lora_B", "magnitude"):
        getattr(reference, name).copy_(getattr(mine, name))
print("agrees with lowrank.DoRALinear:", torch.allclose(reference(x), mine(x), atol=1e-5))

# %% [markdown]
# **Dropout.** `MyDoRALinear` has none. With dropout `p > 0`, the official DoRA code and PEFT drop out only the input
# of the *change* to `W0·x`: `W0·x + (g − 1)·W0·drop(x) + g·s·B·A·drop(x)` with `g = m/‖V‖`, which is what
# `lowrank.DoRALinear` computes (it equals `g·(W0·x + s·B·A·drop(x))` only when nothing is dropped).
# Why that shape: as in LoRA, the frozen path should see the same clean input it sees without adapters, up to the
# rescaling `g`. Write `g·W0·x = W0·x + (g − 1)·W0·x`: the first term is the pretrained layer and keeps the clean
# `x`; only what the adapter adds, the low-rank branch and the magnitude's correction `(g − 1)·W0·x`, gets the
# dropped input.

# %% [markdown]
# ## 3. What the detach saves, measured
#
# One training step of the whole model, with adapters (r = 8) on the query and value projections of every layer:
# LoRA for reference, then your `MyDoRALinear` with the norm not detached (as the seed article computes it) and
# detached (paper §4.3). Three rows. `lowrank.memory.training_step_memory` counts what the step must hold beyond
# the weights: the tensors autograd saves for backward, plus the gradients and AdamW's two buffers of what trains.
# It counts tensors rather than reading an allocator, so it gives the same answer on any device.

# %%
memory_batch = next(batches(data["train"].select(range(32)), 32, shuffle=False, pad_token_id=tokenizer.pad_token_id))
from lowrank.memory import MIB, training_step_memory


def with_my_dora(backbone: nn.Module, detach_norm: bool) -> nn.Module:
    """A copy of the model with section 2's MyDoRALinear on q_lin and v_lin, all else frozen but the head."""
    adapted = lowrank.freeze_all_but_head(copy.deepcopy(backbone))
    for block in adapted.distilbert.transformer.layer:
        block.attention.q_lin = MyDoRALinear(block.attention.q_lin, rank=8, alpha=16, detach_norm=detach_norm)
        block.attention.v_lin = MyDoRALinear(block.attention.v_lin, rank=8, alpha=16, detach_norm=detach_norm)
    return adapted


variants = {"LoRA": lambda: lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=8, alpha=16),
            "DoRA, norm not detached": lambda: with_my_dora(model, detach_norm=False),
            "DoRA, norm detached": lambda: with_my_dora(model, detach_norm=True)}
step_memory = {label: training_step_memory(build(), memory_batch) for label, build in variants.items()}
for label, measured in step_memory.items():
    print(f"{label:>24}: {measured}")
extra = {label: measured.training_extra for label, measured in step_memory.items()}
saved = extra["DoRA, norm not detached"] - extra["DoRA, norm detached"]
adapted = [m for m in with_my_dora(model, True).modules() if isinstance(m, MyDoRALinear)]
V_bytes = sum(layer.base.weight.numel() * layer.base.weight.element_size() for layer in adapted)  # one V per layer
print(f"\nthe detach saves {saved / MIB:.1f} MiB, {saved / extra['DoRA, norm not detached']:.1%} of what the "
      f"not-detached step holds beyond the weights;\nthe {len(adapted)} adapted layers' matrices V "
      f"{tuple(adapted[0].base.weight.shape)} take {V_bytes / MIB:.1f} MiB")
assert extra["DoRA, norm detached"] < extra["DoRA, norm not detached"]

# %% [markdown]
# Read the last line: without the detach, autograd must keep, for every adapted layer, the `[out, in]` matrix `V`
# that it needs to differentiate `‖V‖`; with it, nothing of the norm is kept, and the saving is about the size of those
# matrices (the last printed line). It grows with the layers' size (`out × in`) and their number, not with the batch,
# so on this small model it is a small share of the step, where activations dominate. On large models it is not: the
# paper's ablation (§4.3, Table 7) reports "a training memory reduction of approximately 24.4% in fine-tuning LLaMA
# and 12.4% in VL-BART", with accuracy "unchanged for VL-BART" and "a negligible difference of only 0.2" on LLaMA.
#
# Detached DoRA still holds more than LoRA here: to give `m` its gradient, plain autograd keeps each layer's output
# before the scaling by `g`, a `[batch, tokens, out]` tensor. `lowrank.DoRALinear`, which the rest of the course
# uses, recomputes that tensor in backward instead (a custom autograd function); the practitioner notebook
# [A1](in_practice/A1_speed_and_precision.ipynb) measures that and PEFT's layer.
#
# ## 4. Same numbers as PEFT
#
# PEFT implements DoRA with `LoraConfig(use_dora=True)`. `lowrank.adapter_files.peft_interop.peft_twin` builds PEFT's model with
# our configuration — `LoraConfig(r=8, lora_alpha=16, use_dora=True, target_modules=<the adapted layers>,
# modules_to_save=<the head>)` (DistilBERT has no default target list in PEFT: `target_modules` must be named,
# as the cell prints) — and copies our `A`, `B` and `m` into PEFT's layers. Then we compare the logits of the whole model.

# %%
# NBVAL_CHECK_OUTPUT
from lowrank.adapter_files.peft_interop import peft_twin

seed_everything(0)
ours = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="dora", rank=8, alpha=16).eval()
with torch.no_grad():
    for _, layer in lowrank.adapter_layers(ours):
        layer.lora_B.normal_(std=0.05)
        layer.magnitude.mul_(1 + 0.05 * torch.randn_like(layer.magnitude))
theirs, _ = peft_twin(ours, model)
theirs.eval()
text_batch = tokenizer(["a wonderful, moving film", "the worst service I have ever had", "meh"],
                       padding=True, return_tensors="pt")
with torch.no_grad():
    difference = (ours(**text_batch).logits - theirs(**text_batch).logits).abs().max().item()
print("adapted layers:", len(list(lowrank.adapter_layers(ours))))
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULT_TARGETS

print("PEFT has a default target list for distilbert:", "distilbert" in PEFT_DEFAULT_TARGETS)
print("max |logit difference| vs PEFT DoRA < 1e-5:", difference < 1e-5)

# %% [markdown]
# ## 5. DoRA against LoRA, same data and budget
#
# Query and value adapters, rank 8, α = 16, the same learning rate, data, order and epochs as notebook 02's LoRA
# run. DoRA adds one trainable number per output feature (the magnitude). The LoRA run repeats notebook 02's LoRA
# q,v run except for the random draw of `A` (and, if the two notebooks run on different machines, their arithmetic),
# so the wrap-up (notebook 06) can set the two LoRA runs side by side.

# %% [markdown]
# *Long cell* (about 9–12 min in the full profile, half a minute in quick): two training runs, LoRA then DoRA.
# Interrupting the kernel stops the cell.

# %%
results, trained, test_logits = {}, {}, {}
for method in ("lora", "dora"):
    candidate = lowrank.add_adapters(copy.deepcopy(model).to(device), ["q_lin", "v_lin"], method=method, rank=8, alpha=16)
    train(candidate, data["train"], epochs=profile.epochs, batch_size=profile.batch_size,
          lr=2e-3, seed=0, description=method.upper(), autocast_dtype=setup.autocast_dtype)
    test_logits[method] = predict(candidate, data["test"])
    results[method] = {"test accuracy": logits_accuracy(test_logits[method], data["test"]),
                       "trainable": lowrank.count_parameters(candidate).trainable}
    trained[method] = candidate
print(f"{'':>6} {'test acc':>9} {'trainable':>10}")
for method, r in results.items():
    print(f"{method.upper():>6} {r['test accuracy']:>9.2%} {r['trainable']:>10,}")

# %% [markdown]
# Is the difference real? With one training run per method and one test set, two things limit what the table can
# say. Each accuracy is an estimate from a finite test set: its binomial standard error is `√(p(1 − p)/n)`, about one
# point for `n` = 1,000 tweets near 90 % (the full profile; more on the quick
# profile's 256). And both models are
# scored on the *same* tweets, so the fair question is about the tweets where they disagree: McNemar's paired test
# (`lowrank.comparison.mcnemar`, taught in notebook 02) asks whether those split evenly.

# %%
from lowrank.comparison import mcnemar

test_labels = torch.as_tensor(data["test"]["label"])
correct = {method: (logits.argmax(-1).cpu() == test_labels).tolist() for method, logits in test_logits.items()}
n = len(test_labels)
for method, r in results.items():
    p = r["test accuracy"]
    print(f"{method.upper()}: {p:.1%} of {n:,} test tweets, binomial standard error {100 * (p * (1 - p) / n) ** 0.5:.1f} points")
print(f"DoRA - LoRA: {100 * (results['dora']['test accuracy'] - results['lora']['test accuracy']):+.1f} points; "
      f"LoRA vs DoRA: {mcnemar(correct['lora'], correct['dora'])}")
with open(figure_path("03_results.json"), "w") as handle:  # the wrap-up (06) compares this LoRA with notebook 02's
    json.dump({"profile": profile.name, "results": results,
               "test_correct": {method: "".join("1" if right else "0" for right in rights)
                                for method, rights in correct.items()}}, handle, indent=1)

# %% [markdown]
# With one seed and about 1,000 test tweets, a difference under about two points between two methods is not
# resolved, whichever way it points: a large McNemar p-value says the disagreements split about as evenly as chance
# would split them. To rank methods, train each with several seeds. For scale: the paper's gains over LoRA on
# VL-BART (its Tables 2 and 3) are about one point on image-text tasks (average 77.4 against 76.5) and two on
# video-text tasks (85.4 against 83.5), on a larger model trained for longer; a gain of that size would not be
# resolved here.
#
# ## 6. Merge DoRA, and check nothing changed
#
# After training, the norm `‖W0 + s·B·A‖` (one per row) is a fixed number per row, so the whole layer is again one
# `[out, in]` matrix, `W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖`. `lowrank.merge_adapters` writes it into a plain
# `nn.Linear`, exactly as for LoRA in notebook 01.

# %%
# NBVAL_CHECK_OUTPUT
before = test_logits["dora"]  # its test predictions, from section 5
merged = lowrank.merge_adapters(copy.deepcopy(trained["dora"]))
after = predict(merged, data["test"])
print("adapter layers after merging:", len(list(lowrank.adapter_layers(merged))))
print("same prediction on every test example:", torch.equal(before.argmax(-1), after.argmax(-1)))
print("identical test accuracy:", logits_accuracy(before, data["test"]) == logits_accuracy(after, data["test"]))

# %% [markdown]
# ## 7. DoRA's gradients (paper §4.2), executed
#
# Why train a magnitude and a direction rather than the weight itself? The paper's answer is in the gradients.
# With `W' = m · V'/‖V'‖_c` and `V' = V + ΔV`, its §4.2 says "we can obtain the gradient of Loss ℒ with respect
# to m and V′ = V + ΔV as":
#
# $$\nabla_{V'}\mathcal{L} = \frac{m}{\lVert V'\rVert_c}\left(I - \frac{V'V'^{\mathsf T}}{\lVert V'\rVert_c^2}\right)\nabla_{W'}\mathcal{L} \quad (6)
# \qquad\qquad \nabla_m\mathcal{L} = \frac{\nabla_{W'}\mathcal{L}\cdot V'}{\lVert V'\rVert_c} \quad (7)$$
#
# and "Eq. (6) reveals that the weight gradient ∇W′L is scaled by m/||V′||c and is projected away from the current
# weight matrix". Its §4.3 then treats the norm as a constant (the detach of section 2): "the gradient w.r.t m remains
# unchanged, and ∇V′L is redefined as":
#
# $$\nabla_{V'}\mathcal{L} = \frac{m}{C}\nabla_{W'}\mathcal{L} \quad \text{where } C = \lVert V'\rVert_c \quad (11)$$
#
# **In PyTorch's axes** a paper column is a row of `nn.Linear.weight` (section 1), so all three act row by row.
# Write `G = ∇_{W'}L`, `[out, in]` (for `y = x W'ᵀ + b` it is `Σ (∂L/∂y)ᵀ x` over every token of the batch),
# `g_n` and `v_n` for row `n` of `G` and `V'`, and `v̂_n = v_n/‖v_n‖`:
#
# * eq. 7: `∇m[n] = g_n · v̂_n = ‖g_n‖ cos(g_n, v_n)`: the magnitude receives the part of the row's gradient
#   *along* the row;
# * eq. 6: `∇V'[n] = (m[n]/‖v_n‖) · (g_n − (g_n · v̂_n) v̂_n)`: the direction receives the rest, scaled, and
#   orthogonal to `v_n`;
# * eq. 11 (norm detached, how `lowrank.DoRALinear` trains by default): `∇V'[n] = (m[n]/‖v_n‖) · g_n`, scaled but
#   not projected.
#
# `V' = W0 + s·B A` with `W0` frozen, so the factors get the chain rule: `∇B = s·∇V'·Aᵀ` and `∇A = s·Bᵀ·∇V'`.
# `lowrank.dora_gradients` writes these formulas. We check them against autograd on a real layer: layer 0's query
# projection with a DoRA adapter whose `B` is no longer zero (as after some training), on a batch of real tweets
# and the classification loss. `LayerRecorder` keeps the layer's input and output gradient to form `G`.

# %%
from lowrank.dora_gradients import (LayerRecorder, direction_gradient, lora_factor_gradients, magnitude_gradient,
                                    row_cosines)

seed_everything(0)
probe = lowrank.add_adapters(copy.deepcopy(model), ["layer.0.attention.q_lin"], method="dora", rank=8,
                             alpha=16).eval()  # eval: no dropout, so both backward passes below see the same forward
(probe_name, dora_q), = lowrank.adapter_layers(probe)
with torch.no_grad():
    dora_q.lora_B.normal_(std=0.05)                                    # B ≠ 0: V' ≠ W0
    dora_q.magnitude.mul_(1 + 0.05 * torch.randn_like(dora_q.magnitude))  # m ≠ ‖V'‖
gradient_batch = next(batches(data["train"].select(range(32)), 32, shuffle=False, pad_token_id=tokenizer.pad_token_id))


def relative_difference(autograd: torch.Tensor, formula: torch.Tensor) -> float:
    """max |autograd − formula| / max |formula|."""
    return ((autograd.double() - formula).abs().max() / formula.abs().max()).item()


print(probe_name, "| V'", tuple(dora_q.base.weight.shape), "| m", tuple(dora_q.magnitude.shape),
      "| tokens in the batch:", int(gradient_batch["attention_mask"].numel()))
formula_gradients = {}
for detach in (True, False):
    dora_q.detach_norm = detach
    probe.zero_grad()
    with LayerRecorder(dora_q) as recorder:
        probe(**gradient_batch).loss.backward()
    G = recorder.weight_gradient(torch.float64)                            # ∇_W' L, [out, in]
    V = (dora_q.base.weight + dora_q.scaling * dora_q.lora_B @ dora_q.lora_A).detach().double()  # V', [out, in]
    m = dora_q.magnitude.detach().double()
    grad_V = direction_gradient(G, V, m, detach_norm=detach)             # eq. 11 or eq. 6
    grad_A, grad_B = lora_factor_gradients(grad_V, dora_q.lora_A.detach().double(), dora_q.lora_B.detach().double(),
                                           dora_q.scaling)
    differences = {"∇m (eq. 7)": relative_difference(dora_q.magnitude.grad, magnitude_gradient(G, V)),
                   "∇A": relative_difference(dora_q.lora_A.grad, grad_A),
                   "∇B": relative_difference(dora_q.lora_B.grad, grad_B)}
    print(f"norm {'detached, eq. 11' if detach else 'not detached, eq. 6'}: autograd vs formula, max relative "
          "difference: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()))
    assert max(differences.values()) <= 1e-5
    formula_gradients[detach] = grad_V, grad_B
layer_input, layer_output_grad = recorder.inputs[0], recorder.output_grads[0]

# %% [markdown]
# **What the projection does.** LoRA's factors only see `∇V'` through the rank-`r` products above, so to look at
# `∇V'` itself we let autograd differentiate the paper's formula `W' = m · V'/‖V'‖` with respect to a free `V'`,
# fed with the input and output gradient the layer just recorded. Eq. 6 says each row of that gradient is orthogonal
# to the same row of `V'`; eq. 11 says it is `G`'s row scaled, which keeps `G`'s component along the row.

# %%
for detach in (True, False):
    free_V = V.float().clone().requires_grad_(True)
    norm = free_V.norm(dim=1, keepdim=True)
    W_prime = dora_q.magnitude.detach()[:, None] * free_V / (norm.detach() if detach else norm)
    F.linear(layer_input, W_prime, dora_q.base.bias).backward(layer_output_grad)
    print(f"norm {'detached    ' if detach else 'not detached'}: autograd ∇V' vs eq. {11 if detach else 6}: "
          f"{relative_difference(free_V.grad, formula_gradients[detach][0]):.1e}; "
          f"max |cos(∇V'[n], V'[n])| over rows: {row_cosines(free_V.grad.double(), V).abs().max():.1e}")
cosines = row_cosines(G, V).abs()
print(f"|cos(G[n], V'[n])| over the {len(cosines)} rows: median {cosines.median():.3f}, max {cosines.max():.3f}")
along = magnitude_gradient(G, V)[:, None] * V / V.norm(dim=1, keepdim=True)                 # (g_n · v̂_n) v̂_n
across = V.norm(dim=1, keepdim=True) / m[:, None] * formula_gradients[False][0]             # g_n − (g_n · v̂_n) v̂_n
print(f"G = part along the rows (eq. 7, to m) + part across them (eq. 6, to V'): max relative error "
      f"{relative_difference(along + across, G):.1e}")
(full_V, full_B), (detached_V, detached_B) = formula_gradients[False], formula_gradients[True]
print(f"detaching the norm changes ∇V' by {(detached_V - full_V).norm() / full_V.norm():.1%} "
      f"and ∇B by {(detached_B - full_B).norm() / full_B.norm():.1%} (Frobenius norms) on this layer and batch")

# %% [markdown]
# Without the detach, the direction's gradient is orthogonal to every row of `V'` up to rounding (the printed
# cosines): the along-row part of `G` goes to the magnitude alone (eq. 7), and the direction's gradient only turns
# rows (to first order, a step orthogonal to a row does not change its length). With the norm detached, the
# direction's gradient keeps `G`'s cosines with the rows: part of it asks `V'` to lengthen or shorten rows, which the
# normalisation then cancels in `W'`. The last line above measures how much the detach changes the gradients on this
# layer and batch; the paper reports the effect on accuracy as small: "This approach reduces the gradient graph
# memory consumption drastically without a noticeable difference in accuracy" (§4.3; its Table 7 has the numbers).
#
# ### DoRA is weight normalization of `W0 + s·B A`
#
# Salimans & Kingma (2016) reparameterise a weight vector as `w = g · v/‖v‖`, "weight normalization", and write:
# "weight normalization accomplishes two things: it scales the weight gradient by g/||v||, and it projects the
# gradient away from the current weight vector. Both effects help to bring the covariance matrix of the gradient
# closer to identity and benefit optimization." In plain words: once the length is a separate parameter, the
# steps on the direction are better conditioned, so plain gradient descent works more evenly across directions.
# DoRA's eq. 6–7 are these gradients row by row, and the paper draws
# the same conclusion, citing them: "These two effects contribute to aligning the gradient's covariance matrix more
# closely with the identity matrix, which is advantageous for optimization (Salimans & Kingma, 2016)". What DoRA
# changes is what `v` is and how it trains:
#
# * `v = V' = W0 + s·B A`: the direction moves only through the low-rank `B A` (weight normalization trains all of `v`);
# * `g = m` starts at `‖W0‖` per row, so `W' = W0` at step 0 (PyTorch's `weight_norm` also starts `g` at the norm
#   of the weight it wraps);
# * by default the norm is detached (eq. 11), which drops the projection that weight normalization has.
#
# The paper names the difference it cares about in §4.1: "Weight normalization trains both components from scratch,
# making the method sensitive to different initializations. Conversely, DoRA avoids such initialization concerns
# since both components begin with pre-trained weights."
#
# PyTorch has weight normalization built in: `torch.nn.utils.parametrizations.weight_norm(linear, dim=0)`. That
# `dim=0` is not section 1's bug: `weight_norm`'s `dim` names the axis it **keeps**, one norm per index along it
# (the norm runs over all the other axes), while `Tensor.norm(dim=...)` names the axis it sums **away**. So
# `weight_norm(..., dim=0)` on an `[out, in]` weight keeps one `g` per output row, `‖W[n]‖ = W.norm(dim=1)`:
# DoRA's axis. The next cell checks it on the non-square `ffn.lin1`, then gives `weight_norm` `v = V'` and `g = m`:
# it is DoRA's layer with the norm not detached.

# %%
from torch.nn.utils import parametrizations

lin1_weight = model.distilbert.transformer.layer[0].ffn.lin1.weight.detach()  # [1536, 384]
wrapped = parametrizations.weight_norm(nn.Linear(384, 1536), dim=0)
with torch.no_grad():
    wrapped.weight = lin1_weight.clone()  # sets v and g from this weight: g = its norm along the kept axis
g_lin1 = wrapped.parametrizations.weight.original0
print(f"weight_norm(dim=0) on ffn.lin1 {tuple(lin1_weight.shape)}: g has shape {tuple(g_lin1.shape)}, "
      f"equals W.norm(dim=1): {torch.allclose(g_lin1[:, 0], lin1_weight.norm(dim=1))}; "
      f"W.norm(dim=0) would have shape {tuple(lin1_weight.norm(dim=0).shape)}")
assert torch.allclose(g_lin1[:, 0], lin1_weight.norm(dim=1))

dora_q.detach_norm = False
normalized = parametrizations.weight_norm(nn.Linear(dora_q.base.in_features, dora_q.base.out_features), dim=0)
with torch.no_grad():
    normalized.parametrizations.weight.original0.copy_(dora_q.magnitude[:, None])  # g: one per output row
    normalized.parametrizations.weight.original1.copy_(V)                          # v = V' = W0 + s·B A
    normalized.bias.copy_(dora_q.base.bias)
g, v = normalized.parametrizations.weight.original0, normalized.parametrizations.weight.original1
print("weight_norm's g:", tuple(g.shape), " v:", tuple(v.shape))
normalized_output = normalized(layer_input)
print(f"same output as DoRALinear: max relative difference "
      f"{relative_difference(normalized_output.detach(), dora_q(layer_input).detach().double()):.1e}")
normalized_output.backward(layer_output_grad)
print(f"∇g vs eq. 7: {relative_difference(g.grad[:, 0], magnitude_gradient(G, V)):.1e};  "
      f"∇v vs eq. 6: {relative_difference(v.grad, full_V):.1e}")
assert max(relative_difference(g.grad[:, 0], magnitude_gradient(G, V)), relative_difference(v.grad, full_V)) <= 1e-5

# %% [markdown]
# **Next:** notebook 04 measures how magnitude and direction change during fine-tuning — the paper's Figure 2.

# %% [markdown]
# ## What you learned
#
# * The paper's per-"column" norm is PyTorch's per-row norm: `W.norm(dim=1)`, one magnitude per output feature, and
#   `m · W/‖W‖_row` rebuilds `W` exactly. The seed article's `dim=0` gives one magnitude per *input* feature and
#   raises no error on any shape; its layer also cannot run as printed (section 1).
# * The efficient forward `g·(W0 x + s·B A x) + b`, with `g = m/‖V‖`, equals the direct formula with the same
#   gradients, and the frozen weight never gets one (section 2).
# * Detaching the norm (paper §4.3) saves the `[out, in]` matrix `V` per adapted layer that autograd would keep
#   (section 3 measures it).
# * `lowrank`'s DoRA gives PEFT's logits and merges without changing a prediction; against LoRA on the same budget,
#   one seed and about 1,000 test tweets cannot resolve a difference under about two points (section 5).
# * The paper's gradients (eq. 6, 7 and 11) hold on a real layer: the magnitude receives each row's gradient along
#   the row, the direction the rest, projected away from the row unless the norm is detached; DoRA is weight
#   normalization of `W0 + s·B A`, and `weight_norm`'s `dim=0` is the row axis (section 7).
#
# ## Exercises
#
# The code of each runs in seconds on a 2-core laptop CPU, in the quick profile as in the full one. Checked
# solutions: [solutions/03_solutions.ipynb](solutions/03_solutions.ipynb).
#
# 1. **DoRA with the seed's `dim=0` norm** *(about 15 minutes)*. Write `ColumnDoRALinear`, DoRA with the norm over
#    `dim=0` as the seed article takes it. Train it and `lowrank.DoRALinear` (rank 4) on a 64×64 layer for two
#    targets: one that rescales each *output* feature of the layer, `diag(d)·W`, and one that rescales each *input*
#    feature, `W·diag(d)`. Which layer learns which target, and why?
# 2. **What the magnitude costs in parameters** *(about 5 minutes)*. Predict how many trainable parameters DoRA adds
#    to LoRA of the same rank, with adapters on query and value, and on every linear layer; check with
#    `lowrank.count_parameters`.
# 3. **Does PEFT agree on the axis?** *(about 5 minutes)*. Put PEFT's DoRA on the non-square `ffn.lin1` and compare
#    its `lora_magnitude_vector` with the row norms and the column norms of the pretrained weight.
