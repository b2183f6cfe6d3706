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
# # A1 — Speed and mixed precision (in practice)
#
# *Optional practitioner material beside the course path: the path (01–06) never needs it.* Where a training
# step's time goes on a CPU, and what `lowrank.train` does about it: length groups instead of padded batches, a
# fused AdamW, bf16 autocast where the hardware multiplies bf16, and why the trained parameters stay fp32. Every
# number is measured on your machine as the notebook runs, except bf16's speed on a machine that would only emulate
# bf16: section 7 then shows a committed measurement and names the machine it came from.
#
# Full profile on a 2-core CPU: about 1¼ min with bf16 hardware (fp32 `torch.mm` 91 GFLOP/s per thread),
# ½ min in fp32 only (160 GFLOP/s); quick profile: ½ min in fp32 (90 GFLOP/s) ([measured how](../../docs/runtimes.md)).
# To switch profile, set `profile="quick"` (or `"full"`) in the next cell and run from the top.

# %%
from lowrank.notebook import setup_notebook
setup = setup_notebook(profile=None, load=True)  # None: $LOWRANK_PROFILE (default "full"); "quick" for a live class

# %%
import copy
import json
import os
import platform
import time

import torch

import lowrank
from lowrank.memory import MIB, training_step_memory
from lowrank.settings import REPOSITORY_FIGURES, bf16_is_fast, figure_path, precision_name
from lowrank.timing import interleaved_medians, matmul_gflops
from lowrank.training import (CPU_MICRO_BATCH, batches, length_groups, parameter_groups, resolve_micro_batch_size,
                              schedule_factor, seed_everything, train)

profile, device, model, tokenizer, data = setup.profile, setup.device, setup.model, setup.tokenizer, setup.data
quick = profile.name == "quick"
ROUNDS = 3 if quick else 8  # interleaved timing rounds per contender: fewer in a live class, steadier in full

# %% [markdown]
# ## 1. This machine's rate
#
# Times in this notebook are only meaningful next to the machine's speed. The number to quote is the rate of one
# large matrix product, `torch.mm` of two 2048 × 2048 fp32 matrices, at torch's thread count: divide a time by the
# ratio of your rate to this one to guess yours. The second line says whether this machine multiplies bf16 in
# hardware (section 6 depends on it) and what `lowrank.train` therefore runs in (`LOWRANK_PRECISION=auto`).

# %%
fp32_rate = matmul_gflops()
print(f"torch.mm 2048³ in fp32 on {torch.get_num_threads()} thread(s): {fp32_rate:.0f} GFLOP/s")
print(f"bf16 in hardware: {bf16_is_fast(device)}; lowrank.train trains in: {precision_name(device)}")

# %% [markdown]
# ## 2. Less padding: length groups
#
# A shuffled batch is padded to its longest tweet, and a CPU's time grows with every token it computes, padding
# included. So on a CPU `lowrank.train` runs each batch as groups of `CPU_MICRO_BATCH` tweets (8 in fp32; 16 under
# bf16 autocast, `CPU_MICRO_BATCH_BF16`) of similar length, each group cut to its own longest tweet
# (`lowrank.training.length_groups`). It weights each group's mean loss by the group's share of the batch and calls
# `backward()` per group: the gradients add up to the whole batch's, and the optimiser still steps once per batch.
# On a GPU, where padding is nearly free and small passes waste the device, it keeps whole batches. How many of the
# computed tokens are padding:

# %%
def padding_share(group_size):
    """Fraction of the tokens computed in one pass over the training split that are padding."""
    real = computed = 0
    for batch in batches(data["train"], profile.batch_size, shuffle=True, seed=0, pad_token_id=tokenizer.pad_token_id):
        for group, _ in length_groups(batch, group_size):
            real += int(group["attention_mask"].sum())
            computed += group["attention_mask"].numel()
    return 1 - real / computed


print(f"batches of {profile.batch_size}: padding is {padding_share(None):.0%} of the tokens computed as whole batches, "
      f"{padding_share(CPU_MICRO_BATCH):.0%} in length groups of {CPU_MICRO_BATCH}")

# %% [markdown]
# The same gradient: with dropout off (`model.eval()`: the same computation, no random masks), one batch's gradient
# computed in groups equals the whole batch's up to float rounding. With dropout on, a grouped run draws other masks
# (they have other shapes), so it differs from a whole-batch run as a re-run with other random numbers would.

# %%
lora_start = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=8, alpha=16).to(device)
first_batch = next(batches(data["train"], profile.batch_size, shuffle=True, seed=0, device=device,
                           pad_token_id=tokenizer.pad_token_id))


def batch_gradient(group_size):
    probe = copy.deepcopy(lora_start).eval()  # eval: dropout off, so the two ways compute the same thing
    probe.classifier.weight.data.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))  # a head that is not zero
    for rows, share in length_groups(first_batch, group_size):
        (probe(**rows).loss * share).backward()
    return {name: p.grad for name, p in probe.named_parameters() if p.requires_grad}


whole, grouped = batch_gradient(None), batch_gradient(CPU_MICRO_BATCH)
gap = max(((whole[n] - grouped[n]).abs().max() / whole[n].abs().max().clamp_min(1e-30)).item() for n in whole)
print(f"{len(whole)} trainable tensors; largest gradient difference, relative to the tensor's largest entry: {gap:.1e}")
assert gap < 1e-4

# %% [markdown]
# ## 3. The loop with its speed knobs, against `lowrank.train`
#
# The loop below is what `lowrank.train` runs for a few steps, without its bookkeeping: length groups on a CPU, and
# AdamW with `fused=True`, which updates all trainable tensors in one fused operation instead of a Python loop over
# them (the same update, to rounding: section 4 checks it). Run for the same steps from the same start, the two agree
# step by step.

# %%
def train_in_the_open(model, train_data, *, steps, batch_size, lr, weight_decay=0.01, warmup_fraction=0.06, seed=0):
    """What lowrank.train does for `steps` optimizer steps (within one epoch), in fp32, without its bookkeeping."""
    seed_everything(seed)                                       # dropout's random numbers
    warmup = int(warmup_fraction * steps)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=True)  # one fused update
    group_size = CPU_MICRO_BATCH if device.type == "cpu" else None  # None: the whole batch in one pass
    losses = []
    model.train()
    for batch in batches(train_data, batch_size, shuffle=True, seed=seed, device=device,
                         pad_token_id=tokenizer.pad_token_id):
        if len(losses) == steps:
            break
        for group in optimizer.param_groups:                    # linear warm-up, then linear decay
            group["lr"] = lr * schedule_factor(len(losses), steps, warmup)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for rows, share in length_groups(batch, group_size):    # tweets of similar length, less padding
            part = model(**rows).loss * share                   # this group's share of the batch's loss
            part.backward()                                     # its gradients, added to the other groups'
            loss += part.item()
        optimizer.step()                                        # one AdamW update for the whole batch
        losses.append(loss)
    model.eval()
    return losses


open_steps, open_settings = 4, dict(batch_size=profile.batch_size, lr=2e-3, warmup_fraction=0.5, seed=0)
by_hand, by_helper = copy.deepcopy(lora_start), copy.deepcopy(lora_start)
hand_losses = train_in_the_open(by_hand, data["train"], steps=open_steps, **open_settings)
helper_losses = train(by_helper, data["train"], max_steps=open_steps, progress=False, autocast_dtype=None,  # fp32
                      **open_settings).losses
print("loss, loop above:   ", ", ".join(f"{loss:.6f}" for loss in hand_losses))
print("loss, lowrank.train:", ", ".join(f"{loss:.6f}" for loss in helper_losses))
trainable = [name for name, p in lora_start.named_parameters() if p.requires_grad]
hand_weights, helper_weights = dict(by_hand.named_parameters()), dict(by_helper.named_parameters())
loss_gap = max(abs(a - b) for a, b in zip(hand_losses, helper_losses))
weight_gap = max((hand_weights[n] - helper_weights[n]).abs().max().item() for n in trainable)
print(f"max |loss difference| {loss_gap:.1e}; max |difference| of the {len(trainable)} trainable tensors {weight_gap:.1e}")
assert len(hand_losses) == len(helper_losses) == open_steps and loss_gap <= 1e-6 and weight_gap <= 1e-6

# %% [markdown]
# ## 4. What each knob saves, measured
#
# Two measurements, each with its contenders alternated (A B A B …) so that the machine's noise hits both alike;
# read the ratios, which carry over between machines better than the seconds. First AdamW's update of all the
# model's parameters (full fine-tuning's case, where the optimiser matters most; the line prints how many): fused against `foreach` (one operation per
# kind over lists of tensors) and the plain per-tensor loop, and a check that the three compute the same update.
# Then one LoRA q,v training step in fp32 on the same batch, whole against in length groups of 8.

# %%
full_model = copy.deepcopy(model).to(device)
for p in full_model.parameters():
    p.grad = torch.randn_like(p) * 1e-3
ADAMW_KINDS = {"fused": dict(fused=True), "foreach": dict(foreach=True),
               "per-tensor loop": dict(foreach=False, fused=False)}
optimizers = {kind: torch.optim.AdamW(full_model.parameters(), lr=1e-5, **flags) for kind, flags in ADAMW_KINDS.items()}
optimizer_seconds = interleaved_medians({kind: opt.step for kind, opt in optimizers.items()}, rounds=ROUNDS + 2)
print(f"AdamW step over {sum(p.numel() for p in full_model.parameters()) / 1e6:.1f} M parameters: " +
      ", ".join(f"{kind} {seconds * 1e3:.0f} ms" for kind, seconds in optimizer_seconds.items()))
del full_model, optimizers


def three_adamw_steps(flags):
    """The LoRA tensors after three AdamW steps with the same made-up gradients, under one implementation."""
    generator = torch.Generator().manual_seed(0)
    tensors = [p.detach().clone().requires_grad_() for p in lora_start.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(tensors, lr=2e-3, weight_decay=0.01, **flags)
    for _ in range(3):
        for t in tensors:
            t.grad = torch.randn(t.shape, generator=generator).to(t.device)
        optimizer.step()
    return tensors


after = {kind: three_adamw_steps(flags) for kind, flags in ADAMW_KINDS.items()}
update_gap = max((a - b).abs().max().item() for kind in ("foreach", "per-tensor loop")
                 for a, b in zip(after["fused"], after[kind]))
print(f"the same update: after 3 steps, fused against the other two, max |difference| {update_gap:.1e}")
assert update_gap < 1e-6


def one_step(net, optimizer, batch, group_size, dtype=None):
    """A training step as lowrank.train takes it: groups of `group_size` rows (None: whole), autocast if `dtype`."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        for rows, share in length_groups(batch, group_size):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                part = net(**rows).loss * share
            part.backward()
        optimizer.step()
    return step


timed = copy.deepcopy(lora_start).train()
timed_optimizer = torch.optim.AdamW(parameter_groups(timed, 0.01), lr=2e-3, fused=True)
step_seconds = interleaved_medians({"whole batch": one_step(timed, timed_optimizer, first_batch, None),
                                    "groups of 8": one_step(timed, timed_optimizer, first_batch, CPU_MICRO_BATCH)},
                                   rounds=ROUNDS)
print(f"LoRA q,v step, fp32: whole batch {step_seconds['whole batch']:.2f} s, groups of 8 "
      f"{step_seconds['groups of 8']:.2f} s (ratio {step_seconds['groups of 8'] / step_seconds['whole batch']:.2f})")

# %% [markdown]
# One batch is not a run: its padding share varies from batch to batch (section 2 gives the average). Over many
# batches, and for notebook 02's four methods side by side, `bench/micro_batch_bench.py` measures the same ratios
# (its results: `docs/benchmarks.md`).
#
# ## 5. Where the memory goes
#
# What one training step must hold on top of the weights, per method, for one batch of 32 tweets in one pass in
# fp32: the activations autograd saves for backward, plus the gradients and AdamW's two moments of the trainable
# parameters (`lowrank.memory` explains how it is counted on a CPU, where there is no allocator peak to read). Length
# groups hold the activations of only a group at a time, so training holds less than this: the activation part
# shrinks, gradients and AdamW state do not.

# %%
all_linear = lowrank.targets_from_toggles(key=True, projection=True, mlp=True)
memory_batch = next(batches(data["train"].select(range(32)), 32, shuffle=False, device=device,
                            pad_token_id=tokenizer.pad_token_id))
for label, targets in (("head only", None), ("LoRA q,v r=8", ["q_lin", "v_lin"]),
                       ("LoRA all linear r=8", all_linear), ("full fine-tuning", "all")):
    candidate = copy.deepcopy(model).to(device)
    if targets is None:
        lowrank.freeze_all_but_head(candidate)
    elif targets != "all":
        lowrank.add_adapters(candidate, targets, method="lora", rank=8, alpha=16)
    memory = training_step_memory(candidate, memory_batch)
    print(f"{label:>20}: {memory.training_extra / MIB:6.1f} MiB ({memory})")
    del candidate

# %% [markdown]
# Full fine-tuning alone pays for gradients and AdamW's two moments of every parameter: three fp32 copies, so its
# grads/AdamW part is three times the weights. Every method that trains something below the head pays the
# activations, which LoRA still needs to backpropagate *through* the frozen layers below each adapter; at this batch
# they are of the same order as full fine-tuning's three copies (compare the two parts printed above). Training the
# head alone saves them: backward stops at the head, and its activation part is the smallest line above. The same
# backward through the frozen layers is why a LoRA step still costs much of a full fine-tuning step's compute, far
# more than its share of trainable parameters suggests (this notebook does not time full fine-tuning's step).
#
# ## 6. Mixed precision: the lesson (runs everywhere, in seconds)
#
# Many recent CPUs and GPUs multiply **bfloat16** matrices faster than float32 (on a CPU, AMX tiles or AVX512-BF16;
# elsewhere torch emulates bf16, tens of times *slower* than fp32, as `docs/runtimes.md` measured). bf16 keeps
# fp32's 8 exponent bits, so it has the same range, but only 8 significand bits instead of 24: two to three significant decimal digits. `torch.autocast`
# uses it where it is safe: inside the `with` block, the linear layers' matrix products cast their inputs and weights
# to bf16 and return bf16, while the **parameters stay fp32** (the "master weights"), their gradients arrive in fp32,
# and AdamW's moments stay fp32. `LOWRANK_PRECISION` picks what `lowrank.train` does: `auto`, the default (bf16
# where the hardware multiplies it fast, else fp32), `fp32` or `bf16`. Evaluation always runs in fp32.
#
# Why keep the trained parameters in fp32? bf16's spacing is relative, between 1/256 and 1/128 of a number's size,
# and a change smaller than about half the spacing rounds away. An AdamW step moves a weight by up to about the
# learning rate; for a weight of 1.0, a LoRA rate of 2e-3 is lost, and a hundred such steps add up to nothing:

# %%
for dtype in (torch.float32, torch.bfloat16):
    weight = torch.tensor(1.0, dtype=dtype)
    accumulated = weight.clone()
    for _ in range(100):
        accumulated += 2e-3
    print(f"{str(dtype):>15}: spacing after 1.0 = {torch.finfo(dtype).eps:.1e}; 1.0 + 2e-3 = "
          f"{(weight + 2e-3).item():.6f}; after 100 such steps {accumulated.item():.4f}")
name, layer = next(lowrank.adapter_layers(by_helper))  # a LoRA layer trained for the 4 steps of section 3
update = layer.low_rank_update()
unchanged = lambda dtype: ((layer.base.weight.to(dtype) + update.to(dtype)) == layer.base.weight.to(dtype)).float().mean()
print(f"{name}: merging its update s·B·A into W leaves W unchanged in {unchanged(torch.float32):.0%} of entries in "
      f"fp32, {unchanged(torch.bfloat16):.0%} in bf16")

# %% [markdown]
# Whether a change survives bf16 storage depends on its size relative to the weight's: a step that is tiny next to
# its weight vanishes, and fine-tuning is made of many small, accumulating steps. The last line shows the same loss
# at merge time: adding LoRA's update to a bf16 `W` drops part of it. AdamW's second moment is a running mean that
# moves by a thousandth of the gap at each step (β₂ = 0.999), less than bf16's spacing: stored in bf16, such
# increments would round away next to the running value (not measured here). So parameters and optimizer state
# stay fp32, and under autocast only
# the *computation* is bf16 (a 2 × 5-token input here: bf16 work of microseconds, emulated or not):

# %%
x = torch.randn(2, 5, layer.base.in_features, device=device)
with torch.autocast(device.type, dtype=torch.bfloat16):
    y = layer(x)
y.float().pow(2).mean().backward()
print(f"under autocast: output {y.dtype}; lora_A stored as {layer.lora_A.dtype}, its gradient {layer.lora_A.grad.dtype}")
layer.zero_grad(set_to_none=True)

# %% [markdown]
# ## 7. What bf16 buys, measured
#
# Where the hardware multiplies bf16, the next cell measures it: the bf16 `torch.mm` rate, LoRA q,v training steps
# on section 3's batch in fp32 (groups of 8) and under bf16 autocast (groups of 16), alternated, and
# the first losses of a short run each way; it saves what it measured. Where bf16 is emulated, those measurements
# would take minutes and measure only the emulation, so the cell skips them and shows the measurement committed from
# a machine with bf16 hardware instead, named with its rates.

# %%
BF16_FILE = "A1_bf16_measured.json"


def bf16_machine(device):
    """How the saved measurement names the machine it ran on (read on machines without bf16 hardware)."""
    if device.type == "cuda":
        return f"a {torch.cuda.get_device_name(device)} GPU ({time.strftime('%Y-%m-%d')})"
    kind = "AMX" if torch.cpu._is_amx_tile_supported() else "AVX512-BF16"
    return f"a {platform.machine()} CPU with {kind}, {os.cpu_count()} cores ({time.strftime('%Y-%m-%d')})"


if bf16_is_fast(device):
    bf16_rate = matmul_gflops(torch.bfloat16)
    steps = {name: one_step(timed, timed_optimizer, first_batch, resolve_micro_batch_size("auto", device, dtype), dtype)
             for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}  # as train: 8 rows in fp32, 16 in bf16
    precision_seconds = interleaved_medians(steps, rounds=ROUNDS + 5)
    short_losses = {name: train(copy.deepcopy(lora_start), data["train"], max_steps=open_steps, progress=False,
                                autocast_dtype=dtype, **open_settings).losses
                    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    measured = {"machine": bf16_machine(device), "profile": profile.name,
                "torch_threads": torch.get_num_threads(), "matmul_gflops": {"fp32": fp32_rate, "bf16": bf16_rate},
                "step_seconds": precision_seconds, "losses": short_losses}
    with open(figure_path(BF16_FILE), "w") as handle:
        json.dump(measured, handle, indent=1)
    print(f"measured here, on {measured['machine']}, {measured['torch_threads']} torch thread(s):")
else:
    with open(REPOSITORY_FIGURES / BF16_FILE) as handle:
        measured = json.load(handle)
    print("No bf16 hardware here (bf16 would be emulated, tens of times slower than fp32): not measured.\n"
          f"Committed measurement from {measured['machine']}, {measured['torch_threads']} torch thread(s):")
rates, seconds = measured["matmul_gflops"], measured["step_seconds"]
print(f"  torch.mm 2048³: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s "
      f"({rates['bf16'] / rates['fp32']:.1f}×)")
print(f"  median LoRA q,v training step: fp32 {seconds['fp32']:.2f} s, bf16 {seconds['bf16']:.2f} s "
      f"(bf16/fp32 = {seconds['bf16'] / seconds['fp32']:.2f})")
for name, values in measured["losses"].items():
    print(f"  first {len(values)} losses, {name}:", ", ".join(f"{loss:.6f}" for loss in values))

# %% [markdown]
# Three things to read, whichever machine the lines come from (the first line of the output says). **The step
# gains less than `torch.mm`:** the step's speed-up (1 ÷ its bf16/fp32 ratio) falls short of the `torch.mm`
# rates' ratio (compare the two lines). Likely reasons, not measured one by one here: the step's matrix products
# are far smaller than 2048³ (16 or 8 tweets of a few dozen tokens, 384 features), the bf16 step's groups of 16
# carry more padding than fp32's groups of 8, and much of a step is not a matrix product at all: dropout's random
# numbers, GELU, layer norm, softmax and the optimizer gain little from bf16 matrix units. On a CPU, GELU and the
# feed-forward dropout run in bf16 on a matmul's bf16 output; layer norm runs in fp32 on the fp32 residual sum, the
# optimizer outside autocast; attention runs inside `scaled_dot_product_attention`, whose CPU kernel with dropout on
# is the next section's subject. **The ratio, not the seconds:** seconds depend on the machine and what else runs on
# it. **The losses differ from the first step:** under bf16 `lowrank.train` runs groups of 16, not 8, so dropout
# draws other masks, and bf16 also rounds each linear layer's inputs and output; afterwards the two runs update from
# different gradients. Whether that matters over whole runs was measured by training notebook 02's four methods in
# both precisions (`docs/precision.md` gives the table and how each pair was run): every accuracy difference lay
# inside what re-runs of one precision already move, and no paired test told a bf16 model from its fp32 twin, which
# is why `auto` is the default (a judgement on one seed per method, not proof that bf16 changes nothing).
#
# ## 8. Attention's CPU kernel with dropout on
#
# DistilBERT's attention calls PyTorch's `scaled_dot_product_attention` (SDPA). On a CPU its fused kernel serves
# attention without dropout (evaluation); with dropout on (training), PyTorch falls back to the plain "math"
# implementation: two batched matrix products around a softmax and a dropout, each materialised. On a CPU the cell
# checks both halves of that sentence: the fused kernel (`FLASH_ATTENTION`, asked for by name) and the math fallback
# compute the same attention without dropout, and the fused kernel refuses a call with dropout. Then it times SDPA at
# one batch's shape (32 tweets, 12 heads, 64 tokens, 32 dimensions per head) in fp32, without and with dropout.

# %%
import warnings

import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

generator = torch.Generator(device=device).manual_seed(0)
q, k, v = (torch.randn(32, 12, 64, 32, device=device, generator=generator) for _ in range(3))
with sdpa_kernel(SDPBackend.MATH):
    math_out = F.scaled_dot_product_attention(q, k, v)
if device.type == "cpu":
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused_out = F.scaled_dot_product_attention(q, k, v)  # raises if the fused kernel cannot serve it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns why before it refuses
                F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
            fused_with_dropout = "accepted"
        except RuntimeError:
            fused_with_dropout = "refused (so the default falls back to math)"
else:  # a GPU's fused kernels serve fp32 with dropout: the CPU's case does not arise
    fused_out, fused_with_dropout = F.scaled_dot_product_attention(q, k, v), "not checked on a GPU"
print(f"fused kernel against math fallback, no dropout: max |difference| {(fused_out - math_out).abs().max():.1e}")
print(f"fused kernel asked for with dropout 0.1: {fused_with_dropout}")
sdpa_seconds = interleaved_medians({"no dropout": lambda: F.scaled_dot_product_attention(q, k, v),
                                    "dropout 0.1": lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)},
                                   rounds=ROUNDS + 5)
print(f"SDPA forward, one batch, fp32: no dropout {sdpa_seconds['no dropout'] * 1e3:.1f} ms, dropout 0.1 "
      f"{sdpa_seconds['dropout 0.1'] * 1e3:.1f} ms")
print(f"with dropout, the model's 6 attention forwards at this shape: {6 * sdpa_seconds['dropout 0.1']:.2f} s, against "
      f"a whole-batch training step of {step_seconds['whole batch']:.2f} s (section 4)")
assert (fused_out - math_out).abs().max() < 1e-4 and fused_with_dropout != "accepted"

# %% [markdown]
# Read the last line as an order of magnitude. The backward adds about twice the forward's work, so multiply the
# attention forwards' time by about three before comparing it with the step: with sequences of at most 64 tokens,
# attention with dropout is a minority of this model's step but not a negligible one, and the line before it shows
# what the math fallback costs against the fused kernel per call. With long sequences attention grows with the
# square of the length.
#
# ## What you learned
#
# * Quote a time with the machine's matmul rate; compare contenders alternated on one machine and read ratios.
# * On a CPU, length groups skip most of the padding a shuffled batch carries, with the same gradient up to rounding;
#   a fused AdamW updates every parameter in one operation, the same update.
# * A step's memory beyond the weights is activations plus gradients and AdamW's moments; full fine-tuning pays three
#   fp32 copies of its parameters, and every method that backpropagates below the head pays activations (for LoRA,
#   of the same order as full fine-tuning's three copies here).
# * bf16 has fp32's range with 8 significand bits: small updates round away, so parameters and optimizer state stay
#   fp32 and autocast makes only the computation bf16; it pays only where the hardware multiplies bf16, and even
#   there a step gains less than its matrix products.
