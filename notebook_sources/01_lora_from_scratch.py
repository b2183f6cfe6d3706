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
# # 01 — LoRA from scratch
#
# Low-Rank Adaptation (Hu et al., 2021, [arXiv:2106.09685](https://arxiv.org/abs/2106.09685)) fine-tunes a
# pretrained network by *freezing* every weight matrix `W` and learning a small update `ΔW = (α/r)·B·A` of rank at
# most `r`. You will see why a low-rank update is enough, write the layer yourself, find out why it scales by `α/r`,
# count what it trains, merge it away for inference, and check three things in LoRA code found online, using the
# article this course grew out of. On a first pass, sections 2–5 are the core; 1 and 6 can wait.
#
# About 1½ min in the full profile on a 2-core CPU, with or without bf16 hardware, and ½ min in quick
# ([measured how, and at which speeds](../docs/runtimes.md)).
# To switch, pass `profile="quick"` (live class) or `"full"` (self-study, the saved outputs) in the next cell and
# run from the top.

# %%
import copy

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import lowrank
from lowrank.notebook import setup_notebook
from lowrank.settings import figure_path
from lowrank.training import seed_everything, train

setup = setup_notebook(profile=None, load=True, use_device=False)  # None: $LOWRANK_PROFILE (default "full")
profile, model, tokenizer, data = setup.profile, setup.model, setup.tokenizer, setup.data
queries = [name for name, _ in model.named_modules() if name.endswith("q_lin")]  # the attention query projections

# %% [markdown]
# ## 1. Why a low-rank update is enough
#
# A pretrained weight matrix is *not* low rank: its singular values decay slowly. The claim of LoRA
# is about the **update** a fine-tune makes; the paper hypothesises that "the change in weights during model
# adaptation also has a low 'intrinsic rank'" (Hu et al., section 1): most of its energy sits in a few directions.
# Let us check that on the course's backbone (a DistilBERT-architecture model; notebook 02 says what it is).
# We fine-tune all weights for a few steps, then compare how much of each matrix's energy (`‖·‖²_F`, the sum of its
# squared singular values) its best rank-`r` approximation keeps: the update `ΔW = W_t − W_0` of each attention
# query matrix, `W_0` itself, and a random matrix of the same shape. The best rank-`r` approximation keeps the `r`
# largest singular values (the Eckart–Young theorem), so it keeps `(σ₁² + … + σᵣ²) / Σσ²` of the energy: a cumulative
# sum, which `energy_captured` computes.

# %% [markdown]
# `train` below is the course's ordinary PyTorch training loop: batches of tokenized sentences, cross-entropy
# loss, `loss.backward()`, an AdamW step, a learning rate that warms up and then decays. Notebook 02 writes the core
# of this loop out line by line (its section 3), then runs `train` on the same batches beside it (section 4); `train`
# adds the warm-up and decay, a progress bar and, when the caller passes `autocast_dtype` (as the cell below does), a
# forward pass in bfloat16 where the CPU computes it fast (the optional notebook `in_practice/A1` explains). Here it only fine-tunes every weight of a copy
# of the model for a few steps, so that we have a real update `ΔW` to look at.
#
# *Long cell* (about a minute in the full profile): a short fine-tune. Interrupting the kernel stops it.

# %%
pretrained = {name: model.get_submodule(name).weight.detach().clone() for name in queries}
probe = copy.deepcopy(model)
probe_run = train(probe, data["train"], max_steps=profile.probe_steps, lr=5e-5, seed=0, description="full fine-tune probe",
                  autocast_dtype=setup.autocast_dtype)  # the course's training precision (notebook A1)
updates = {name: probe.get_submodule(name).weight.detach() - pretrained[name] for name in queries}
window = max(1, profile.probe_steps // 6)
print(f"{profile.probe_steps} steps of full fine-tuning, mean loss of the first {window} steps "
      f"{sum(probe_run.losses[:window]) / window:.3f} -> last {window}: {sum(probe_run.losses[-window:]) / window:.3f}")


# %%
def energy_captured(matrix: torch.Tensor) -> torch.Tensor:
    """Fraction of ||M||_F^2 kept by the best rank-r approximation, for r = 1 .. min(shape)."""
    singular = torch.linalg.svdvals(matrix.double())
    return (singular.square().cumsum(0) / singular.square().sum()).float()


ranks = torch.arange(1, min(pretrained[queries[0]].shape) + 1)
curves = {
    "update ΔW (fine-tune)": torch.stack([energy_captured(updates[n]) for n in queries]).mean(0),
    "pretrained W": torch.stack([energy_captured(pretrained[n]) for n in queries]).mean(0),
    "random Gaussian": energy_captured(torch.randn_like(pretrained[queries[0]])),
}
for label, curve in curves.items():
    needed = int((curve < 0.9).sum().item()) + 1
    print(f"{label:>22}: rank 8 keeps {curve[7]:.0%}, rank 32 keeps {curve[31]:.0%} of the energy; "
          f"90 % needs rank {needed} of {len(curve)}")

fig, ax = plt.subplots(figsize=(6, 3.6))
for label, curve in curves.items():
    ax.plot(ranks, curve, label=label)
ax.axvline(8, color="grey", linestyle=":", label="r = 8")
ax.set_xscale("log")
ax.set_xlabel("rank r of the approximation")
ax.set_ylabel("fraction of ||·||²_F kept")
ax.set_title("Energy kept at rank r (query matrices: mean of the layers; random: one matrix)", fontsize=9)
ax.legend()
fig.tight_layout()
fig.savefig(figure_path("01_update_spectrum.png"), dpi=120)
plt.show()

# %% [markdown]
# Read the three curves at `r = 8`, and the rank each needs for 90 % of its energy (printed above). The pretrained
# matrix and the random one need a large share of their ranks; the fine-tuning update should need far fewer
# directions than either, and the printed ranks say by how much. (How concentrated
# depends on the run: a few steps of AdamW produce a noisy update; the printed numbers above are what
# this run measured.) A rank-8 LoRA cannot represent the rest of this update's energy (one minus the share printed
# for rank 8); LoRA bets that the remainder matters little for the task, and then learns a rank-`r` update directly
# instead of learning a full `ΔW` and compressing it.
#
# ## 2. The formula, with PyTorch's axes
#
# `nn.Linear` stores `weight` as `[out_features, in_features]` and computes `y = x @ W.T + b`.
# LoRA replaces `W` by
#
# $$W' = W + \frac{\alpha}{r}\, B A, \qquad A \in \mathbb{R}^{r \times \text{in}},\quad B \in \mathbb{R}^{\text{out} \times r}.$$
#
# * **One factor starts at zero** so that `W' = W` at step 0: training starts *exactly* at the pretrained
#   model. The paper zeroes `B`, the factor applied last: "We use a random Gaussian initialization for A and zero
#   for B, so ΔW = BA is zero at the beginning of training" (section 4.1). The paper's own code (`loralib`) and PEFT
#   (Hugging Face's `peft` library, the usual way to add LoRA to a model; notebook 02 uses it) zero `B` too but draw
#   `A` Kaiming-uniform, and so does the layer below: `kaiming_uniform_(A, a=5 ** 0.5)` is how PyTorch initialises an `nn.Linear`'s weight by
#   default, and PEFT uses the same call for `A` (the `√5` is just that default's parameter).
#   Then `B` receives a gradient at step 0 while `A` does not yet: for one input `x` written as a column vector
#   (so `y = W x + b`) with output gradient `g = ∂L/∂y`, `∂L/∂B = (α/r)·g·(A x)ᵀ`, an outer product of shape
#   `[out × r]`, nonzero since `A x ≠ 0`; `∂L/∂A = (α/r)·Bᵀ g xᵀ`, which is zero while `B = 0`. PyTorch stacks
#   inputs as the rows of `X` (`Y = X Wᵀ + b`), and the batched form is `∂L/∂B = (α/r)·Gᵀ(X Aᵀ)`. The cell below
#   checks that formula against autograd, and that `∂L/∂A` is zero while `B = 0`.
# * **`α/r`, not `α`**: see section 3, measured.
# * **Dropout** acts on the input of the LoRA branch only (column-vector form): `y = W x + b + (α/r)·B A·dropout(x)`.
#   The frozen path sees the clean input, exactly as in the pretrained model.
#
# We build the layer now, one piece at a time, after checking the gradients just stated.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
rank_demo, alpha_demo, X = 4, 8, torch.randn(5, 12)         # a batch of 5 inputs, in = 12
A = (torch.randn(rank_demo, 12) / 12 ** 0.5).requires_grad_()  # [r, in], random
B = torch.zeros(7, rank_demo, requires_grad=True)             # [out, r], zero: out = 7
Y = (alpha_demo / rank_demo) * X @ A.T @ B.T                   # the LoRA branch, [5, out]
G = torch.randn_like(Y)                                         # some upstream gradient ∂L/∂Y
Y.backward(G)
formula_B = (alpha_demo / rank_demo) * G.T @ (X @ A.T)          # (α/r)·Gᵀ(X Aᵀ): [out, r]
print("∂L/∂B shape:", tuple(B.grad.shape), "- matches (α/r)·Gᵀ(X Aᵀ):", torch.allclose(B.grad, formula_B, atol=1e-6))
print("∂L/∂A is zero while B = 0:", bool((A.grad == 0).all()))

# %% [markdown]
# The layer we are about to build, drawn with the sizes of the backbone's query projections (orange boxes
# train, the grey one is frozen, the blue one is the fixed scale `α/r`; `lowrank.diagrams` draws it, so the
# picture is code and is tested):

# %%
from lowrank.diagrams import lora_diagram

query_layer = model.get_submodule(queries[0])
lora_diagram(in_features=query_layer.in_features, out_features=query_layer.out_features, rank=8, alpha=16,
             save_as="01_lora_layer.png")
plt.show()

# %%
class MyLoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * B(A(dropout(x))), with base frozen and B = 0 at the start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)                                   # 1. freeze W and b
        self.scaling = alpha / rank                                       # 2. alpha / r
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))   # 3. A: [r, in], random
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # 4. B: [out, r], zero
        self.dropout = nn.Dropout(dropout)                                # 5. on the LoRA input only

    def forward(self, x):
        # two thin matmuls, x -> [.., r] -> [.., out]: never forms the [out, in] matrix B @ A
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self):
        return self.base.weight + self.scaling * self.lora_B @ self.lora_A


# %% [markdown]
# Check it: at step 0 the layer is the base layer; its shapes follow `[out, in]`; and after giving `B`
# some values it computes what `lowrank.LoRALinear` computes with the same factors (to float rounding).

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
base = nn.Linear(384, 384)
mine = MyLoRALinear(base, rank=8, alpha=16)
x = torch.randn(4, 10, 384)
print("A:", tuple(mine.lora_A.shape), " B:", tuple(mine.lora_B.shape), " scaling:", mine.scaling)
print("output equals the base layer at step 0:", torch.equal(mine(x), base(x)))

reference = lowrank.LoRALinear(copy.deepcopy(base), rank=8, alpha=16)
print("lowrank.LoRALinear also starts at the base layer:", torch.equal(reference(x), base(x)),
      "| scaling:", reference.scaling)
with torch.no_grad():
    mine.lora_B.normal_()
    reference.lora_A.copy_(mine.lora_A)
    reference.lora_B.copy_(mine.lora_B)
print("agrees with lowrank.LoRALinear:", torch.allclose(mine(x), reference(x), atol=1e-5))
print("merged weight agrees:", torch.allclose(mine.merged_weight(), reference.merged_weight(), atol=1e-6))
print("trainable:", [name for name, p in mine.named_parameters() if p.requires_grad])


# %% [markdown]
# ## 3. Why scale by `α/r` and not by `α`
#
# The update is `ΔW = s·B·A`. What an optimiser step does to `ΔW` depends on `s` and on `r`. With Adam,
# the first step moves every entry of `B` by about the learning rate, whatever `r` is (Adam normalises each
# entry's step). `B·A` is a sum of `r` rank-one terms, column `j` of `B` times row `j` of `A`; each has about the
# same size, and since the rows of `A` are random, independent directions, their sizes add like a random walk:
# `‖ΔW‖` after one step grows like `s·√r`. Measure it (the plot checks the `√r`): one AdamW step on the same layer, same data, same learning rate, for several ranks,
# with the three scalings in use: `s = α` (many from-scratch tutorials), `s = α/r` (LoRA paper, PEFT) and
# `s = α/√r` (rsLoRA, Kalajdzievski 2023).

# %%
def first_step_update_norm(rank: int, scaling: float, seed: int = 0, a_std: float | None = None) -> float:
    """‖ΔW‖_F / ‖W‖_F after one AdamW step (lr 1e-3) on a fixed regression task.

    ``a_std``: draw A from a Gaussian of this standard deviation instead of the layer's Kaiming-uniform."""
    torch.manual_seed(seed)
    layer = lowrank.LoRALinear(nn.Linear(384, 384), rank=rank, alpha=1.0)
    layer.scaling = scaling
    if a_std is not None:
        with torch.no_grad():
            layer.lora_A.normal_(std=a_std)
    optimizer = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-3)
    x, target = torch.randn(64, 384), torch.randn(64, 384)
    F.mse_loss(layer(x), target).backward()
    optimizer.step()
    return (layer.low_rank_update().norm() / layer.base.weight.norm()).item()


alpha = 16
rank_grid = [1, 2, 4, 8, 16, 32, 64]
scalings = {"α (Kaiming-uniform A)": lambda r: alpha, "α/r (LoRA, PEFT)": lambda r: alpha / r,
            "α/√r (rsLoRA)": lambda r: alpha / r ** 0.5}
step_sizes = {label: [first_step_update_norm(r, s(r)) for r in rank_grid] for label, s in scalings.items()}
for label, sizes in step_sizes.items():
    print(f"{label:>21}: r=1 -> r=64 changes the first step by x{sizes[-1] / sizes[0]:.2f}")

fig, ax = plt.subplots(figsize=(6, 3.4))
for label, sizes in step_sizes.items():
    ax.plot(rank_grid, sizes, marker="o", label=label)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("rank r")
ax.set_ylabel("‖ΔW‖ / ‖W‖ after one step")
ax.legend()
fig.tight_layout()
fig.savefig(figure_path("01_scaling_vs_rank.png"), dpi=120)
plt.show()

# %% [markdown]
# With `s = α`, going from `r = 1` to `r = 64` multiplies the size of the first step by the factor printed above
# (close to `√64 = 8`, as `s·√r` predicts): changing the rank
# silently changes the learning rate, and a learning rate tuned at one rank is wrong at another. Dividing by
# `r` removes that growth (it over-corrects by `√r`: larger ranks take *smaller* first steps; rsLoRA's `α/√r`
# is flat). The LoRA paper's reason for `α/r` is the same worry: "When optimizing with Adam, tuning α is roughly
# the same as tuning the learning rate if we scale the initialization appropriately. As a result, we simply set
# α to the first r we try and do not tune it. This scaling helps to reduce the need to retune hyperparameters
# when we vary r" (section 4.1).
#
# So what should you use? `α/r` is the LoRA paper's and PEFT's default, and this course uses it so that its
# numbers compare with theirs. rsLoRA's `α/√r` (exercise 1; PEFT's `use_rslora=True`) keeps the first step the
# same size across ranks, which matters if you compare or sweep ranks with one learning rate. At a fixed rank
# the choice matters little: either is a constant factor, roughly the same as a different learning rate (the
# paper's point, quoted above). `lowrank.LoRALinear.scaling` is one attribute if you want to try `α/√r`.
#
# ## 4. How many parameters?
#
# A full `[out, in]` update has `out·in` numbers; LoRA trains `r·(in + out)`.

# %%
# NBVAL_CHECK_OUTPUT
out_features, in_features = model.get_submodule(queries[0]).weight.shape
shapes = {"this backbone": (out_features, in_features), "distilbert-base-uncased": (768, 768)}  # one query matrix
print("LoRA parameters of one query matrix, and their share of the matrix's own:")
print(f"{'r':>4}" + "".join(f" {f'{name}, {o}x{i}':>33}" for name, (o, i) in shapes.items()))
for r in [1, 2, 4, 8, 16, 64, 256]:
    print(f"{r:>4}" + "".join(f" {r * (o + i):>22,} ({r * (o + i) / (o * i):>7.2%})" for o, i in shapes.values()))

# %% [markdown]
# And on the whole backbone, with adapters on the query and value projections of every layer (the paper's usual
# choice: "we only apply LoRA to Wq and Wv in most experiments for simplicity", section 5) — the classification
# head, freshly initialised, trains in full (notebook 02, section 2, says why). `lowrank.add_adapters` swaps the named
# layers for LoRA layers and freezes everything else except the classification head; notebook 02 §2 does the same by
# hand in a few lines.

# %%
# NBVAL_CHECK_OUTPUT
print(f"model (pretrained backbone + new classification head): {lowrank.count_parameters(model).total:,} parameters")
for r in [1, 4, 8, 16, 64]:
    adapted = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=r, alpha=16)  # α: no effect on counts
    adapter_only = sum(p.numel() for n, p in adapted.named_parameters() if "lora_" in n)
    print(f"r={r:>2}: {adapter_only:>9,} adapter parameters; with the head: {lowrank.count_parameters(adapted)}")

# %% [markdown]
# ## 5. Merge for inference: same outputs, no extra latency
#
# After training, `W + (α/r)·B·A` is just another `[out, in]` matrix. `lowrank.merge_adapters` replaces every
# adapter layer by a plain `nn.Linear` holding it, so the deployed model is exactly as fast as the original.
# We give the adapters non-zero values (as after training) and compare.

# %%
# NBVAL_CHECK_OUTPUT
seed_everything(0)
adapted = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"], rank=8)
with torch.no_grad():
    for _, layer in lowrank.adapter_layers(adapted):
        layer.lora_B.normal_(std=0.02)
adapted.eval()
batch = tokenizer(list(data["test"]["text"][:32]), padding="max_length", truncation=True,
                  max_length=64, return_tensors="pt")
with torch.no_grad():
    unmerged_logits = adapted(**batch).logits
    merged = lowrank.merge_adapters(copy.deepcopy(adapted))
    merged_logits = merged(**batch).logits
print("adapter layers left after merging:", len(list(lowrank.adapter_layers(merged))))
print("max |merged - unmerged| logit < 1e-4:", (merged_logits - unmerged_logits).abs().max().item() < 1e-4)


# %%
from lowrank.timing import interleaved_medians, no_grad_forward  # contenders in turn (A B C A B C ...), medians

latency = interleaved_medians({"base": no_grad_forward(model.eval(), batch), "unmerged LoRA": no_grad_forward(adapted, batch),
                               "merged LoRA": no_grad_forward(merged, batch)}, rounds=5 if profile.name == "quick" else 20)
for name, seconds in latency.items():
    print(f"{name:>14}: {1000 * seconds:6.1f} ms per batch of 32x64  (x{seconds / latency['base']:.2f} of base)")

# %% [markdown]
# The merged model costs what the base costs (differences are the machine's noise); the unmerged one pays for the
# extra work in each adapted layer: little arithmetic, but two thin matmuls, a scaling and an addition that run as
# separate operations. Keep adapters unmerged to switch tasks cheaply; merge to deploy.
#
# ## 6. Three things to check in LoRA code you find online
#
# This course grew out of a short blog article, "LoRA和DoRA" ("LoRA and DoRA", in Chinese, by 张广益, 16 May 2024),
# which puts both into DistilBERT; we call it the *seed article*. Its `LoRALayer` is, line for line, the one in
# early versions of Sebastian Raschka's LLMs-from-scratch appendix E, a layer many tutorials copy. (The book's
# repository has changed since: later versions draw `A` Kaiming-uniform, and the current one scales by `α/r`; its
# issue #821 reported the `α` scaling.) Now that you have built the layer, three things take one look each, and each is run below. (The
# article's DoRA code is run in notebook 03, once DoRA is built.)
#
# 1. **Which factor is zero.** The article's text says "在初始化时，矩阵 A 为零矩阵，B 为随机的高斯分布" ("at
#    initialisation, A is a zero matrix and B random Gaussian"); its code zeros the factor applied last (its `B`,
#    `[r, out]`), like section 2. Here the text is wrong, not the code. Either choice starts at `W' = W`; making *both*
#    random does not. The two choices do not train alike: Hayou et al. (2024, "The Impact of Initialization on LoRA
#    Finetuning Dynamics") find that "the first scheme (initializing B to zero and A to random) on average yields
#    better performance compared to the other scheme".
# 2. **The scaling.** It scales by `α`, not `α/r`: with the same factors, its update is `r` times the LoRA paper's.
#    That is a convention, not a crash, but `α` values do not carry over between the two conventions. Section 3 measured the first step with a
#    Kaiming-uniform `A`, whose scale does not depend on `r`; the article draws `A` with standard deviation `1/√r`,
#    which shrinks as `r` grows, and the cell below measures what that does to the first step.
# 3. **A setting that goes nowhere.** The script sets `lora_dropout = 0.05` and passes it to no layer, so a model built
#    this way trains without dropout.

# %%
# NBVAL_CHECK_OUTPUT
# Mistakes 1 and 2: the article's LoRALayer, as printed, next to its text ("A is zero, B Gaussian").
class SeedLoRALayer(torch.nn.Module):
    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        std_dev = 1 / torch.sqrt(torch.tensor(rank).float())
        self.A = torch.nn.Parameter(torch.randn(in_dim, rank) * std_dev)
        self.B = torch.nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha = alpha

    def forward(self, x):
        x = self.alpha * (x @ self.A @ self.B)
        return x


torch.manual_seed(0)
seed_lora = SeedLoRALayer(12, 7, rank=4, alpha=8)
for factor in ("A", "B"):
    tensor = getattr(seed_lora, factor)
    print(f"code's {factor}: shape {tuple(tensor.shape)}, all zero: {bool((tensor == 0).all())}")

# A layer where neither factor is zero does not start at the pretrained model.
both_random = lowrank.LoRALinear(nn.Linear(384, 384), rank=8, alpha=16)
with torch.no_grad():
    both_random.lora_B.normal_(std=1 / 8 ** 0.5)  # the article's std for its random factor
x = torch.randn(8, 384)
print("both random, output equals base at step 0:", torch.allclose(both_random(x), both_random.base(x)))
print(f"relative change of the weight before any training: "
      f"{(both_random.low_rank_update().norm() / both_random.base.weight.norm()).item():.1f}x ‖W‖")

# Its scaling: give it the same factors as a lowrank.LoRALinear (transposed: its names are [in, r] and [r, out]).
paper = lowrank.LoRALinear(nn.Linear(12, 7), rank=4, alpha=8)
with torch.no_grad():
    seed_lora.B.normal_()
    paper.lora_A.copy_(seed_lora.A.T)
    paper.lora_B.copy_(seed_lora.B.T)
x = torch.randn(5, 12)
print("with the same factors, the seed's update is r = 4 times the LoRA paper's (α/r):",
      torch.allclose(seed_lora(x), 4 * paper.lora_branch(x), atol=1e-5))

# Its A has standard deviation 1/√r: section 3's first-step measurement, with the seed's scaling α and the seed's A.
seed_steps = [first_step_update_norm(r, alpha, a_std=1 / r ** 0.5) for r in rank_grid]
print(f"scaling α, A drawn with std 1/√r (the seed's layer): r=1 -> r=64 changes the first step by "
      f"x{seed_steps[-1] / seed_steps[0]:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
# Mistake 3. The article sets `lora_dropout = 0.05`, then builds its layers with
# `partial(LinearWithLoRA, rank=lora_r, alpha=lora_alpha)`; `LinearWithLoRA(linear, rank, alpha)` passes them on to
# its `LoRALayer`. What does that layer accept?
import inspect

parameters = list(inspect.signature(SeedLoRALayer.__init__).parameters)[1:]
print(f"SeedLoRALayer takes {parameters}: a dropout argument? {any('dropout' in p for p in parameters)}")


# %% [markdown]
# So the article's `lora_dropout = 0.05` is a variable that no layer receives: a model built this way would train
# without dropout. In `lowrank`, `dropout` is an argument of every adapter and acts on the LoRA branch.
#
# And the scaling: with the seed's own `A` (standard deviation `1/√r`), the first step changes with `r` by the factor
# printed above, far less than section 3's `s = α` with a Kaiming-uniform `A`: the shrinking `A` offsets the `√r`
# growth at the first step. The step size then depends on two choices that must be changed together (the scale of
# `A` and `s`); `α/r` with a rank-independent `A`, the paper's code and PEFT's, is what published LoRA
# hyperparameters assume.
#
# **Next:** notebook 02 puts your layer into a pretrained model and fine-tunes it on sentiment.

# %% [markdown]
# ## What you learned
#
# * A fine-tuning update of the query matrices keeps far more of its energy in its top 8 directions than the
#   pretrained weights or a random matrix do (section 1's three curves): the bet LoRA makes.
# * LoRA's layer is `W + (α/r)·B·A` with `A: [r, in]` random and `B: [out, r]` zero: it starts exactly at the base
#   layer, only `B` gets a gradient at the first step, and your `MyLoRALinear` computes what `lowrank.LoRALinear` does.
# * With a Kaiming-uniform `A`, scaling by `α` makes the first step grow with the rank; `α/r` (LoRA, PEFT)
#   over-corrects, `α/√r` (rsLoRA) keeps it flat (section 3 measures all three).
# * LoRA trains `r·(in + out)` numbers per matrix: with rank-8 adapters on the query and value matrices, the whole
#   model trains about 1 % of its parameters, most of them the new head (section 4 prints the adapters alone).
# * Merging writes `W + (α/r)·B·A` into a plain `nn.Linear`: same logits, and the base model's cost (section 5).
# * Three things to check in LoRA code found online, run on the seed article's: its text and code disagree on which
#   factor is zero, it scales by `α` (with the same factors, `r` times the paper's update), and its dropout reaches
#   no layer.
#
# ## Exercises
#
# Each takes 10–15 minutes of thinking and typing; the code trains single layers, not the backbone, so it is
# quick in either profile. Checked solutions: [solutions/01_solutions.ipynb](solutions/01_solutions.ipynb).
#
# 1. **rsLoRA as a layer** *(about 10 minutes)*. Write `RsLoRALinear`, a subclass of `lowrank.LoRALinear` whose
#    update is scaled by `α/√r`. Check it against PEFT's `LoraConfig(use_rslora=True)` given the same factors, then
#    repeat section 3's first-step measurement for ranks 1 to 64 with both layers.
# 2. **Zero the other factor** *(about 10 minutes)*. The seed article's text zeroes `A` and draws `B` at random.
#    Build that layer from `lowrank.LoRALinear`, check that it also starts at the base layer, and find out which
#    factor receives a gradient at step 0 in each convention.
# 3. **The rank of what LoRA learns** *(about 15 minutes)*. Train a rank-4 `lowrank.LoRALinear` and a plain
#    `nn.Linear` (full fine-tuning) for 20 AdamW steps on the same regression task (a random teacher layer). What
#    is the rank of each update `ΔW`? How much of each does `energy_captured` keep at rank 4?
