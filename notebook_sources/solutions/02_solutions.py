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
# # Solutions — notebook 02, LoRA on DistilBERT
#
# Try each exercise before reading its solution. Every solution checks its answer with an `assert`.
#
# **Runtime on a 2-core laptop CPU:** under a minute with `LOWRANK_PROFILE=quick`, where the rank sweep
# trains each rank for 4 steps and tests on 64 tweets (its accuracies are then noise: it shows the code working);
# about 15 minutes with `full`, where each rank trains as long as notebook 02's runs.

# %%
# The profile: None keeps $LOWRANK_PROFILE (default "full"); set "quick" for a fast pass, then run from the top.
import os

PROFILE = None
if PROFILE:
    os.environ["LOWRANK_PROFILE"] = PROFILE

# %%
import copy

import datasets
import torch

import lowrank
from lowrank.data import load_sentiment
from lowrank.settings import backbone_name, current_profile, dataset_name
from lowrank.training import accuracy, seed_everything, tokenize, train

profile = current_profile()
datasets.disable_progress_bars()  # keep the tokenizer's progress bars out of the solutions' outputs
seed_everything(0)
model, tokenizer = lowrank.load_backbone(backbone_name())
data = tokenize(load_sentiment(dataset_name(), train_size=profile.train_size, eval_size=profile.eval_size, seed=0),
                tokenizer, profile.max_length)
print(f"profile: {profile.name}; backbone: {backbone_name()}; data: {dataset_name()}")

# %% [markdown]
# ## Exercise 1 — Count before you run
#
# *Predict, with pencil and paper, the number of trainable parameters of "LoRA on all linear layers, r = 8"
# in notebook 02's table, then check it with `lowrank.count_parameters`.*
#
# A LoRA adapter on an `[out, in]` layer trains `r·(in + out)` numbers. Each of the 6 layers has four
# `384 → 384` attention matrices (`q_lin`, `k_lin`, `v_lin`, `out_lin`) and the feed-forward `lin1`
# (`384 → 1536`) and `lin2` (`1536 → 384`). The head trains in full: `pre_classifier` (`384 → 384`, with
# bias) and `classifier` (`384 → 2`, with bias).

# %%
r = 8
per_block = 4 * r * (384 + 384) + 2 * r * (384 + 1536)
head = (384 * 384 + 384) + (384 * 2 + 2)
predicted = 6 * per_block + head
targets = lowrank.targets_from_toggles(key=True, projection=True, mlp=True)
counted = lowrank.count_parameters(lowrank.add_adapters(copy.deepcopy(model), targets, rank=r, alpha=2 * r))
print(f"predicted {predicted:,} = 6 × {per_block:,} (adapters per block) + {head:,} (head); counted: {counted}")
assert counted.trainable == predicted

# %% [markdown]
# ## Exercise 2 — A rank sweep
#
# *Train LoRA on the query and value projections at ranks 1, 4 and 16 (`alpha=2 * r`, so `α/r` stays 2; `lr=2e-3`)
# and tabulate test accuracy against trainable parameters.*
#
# The cost of a rank is `2 · 6 · r · (384 + 384)` adapter parameters (query and value, six layers) on top of
# the head: linear in `r`. What it buys is the question; in the `full` profile each rank trains for notebook
# 02's two epochs.

# %%
head_only = lowrank.count_parameters(lowrank.freeze_all_but_head(copy.deepcopy(model))).trainable
quick = profile.name == "quick"
budget = dict(max_steps=4, batch_size=8) if quick else dict(epochs=profile.epochs, batch_size=profile.batch_size)
test = data["test"].select(range(64)) if quick else data["test"]
sweep = {}
for rank in (1, 4, 16):
    candidate = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=rank, alpha=2 * rank)
    run = train(candidate, data["train"], lr=2e-3, seed=0, progress=False, **budget)
    sweep[rank] = {"model": candidate, "steps": run.steps, "test accuracy": accuracy(candidate, test),
                   "trainable": lowrank.count_parameters(candidate).trainable}
print(f"{'rank':>4} {'steps':>6} {'trainable':>10} {'adapters':>9} {'test acc':>9}")
for rank, row in sweep.items():
    print(f"{rank:>4} {row['steps']:>6} {row['trainable']:>10,} {row['trainable'] - head_only:>9,} "
          f"{row['test accuracy']:>9.1%}")
    assert row["trainable"] - head_only == 2 * 6 * rank * (384 + 384)
n_test = len(test)
p = sum(row["test accuracy"] for row in sweep.values()) / len(sweep)
half_width = 1.96 * (p * (1 - p) / n_test) ** 0.5
print(f"95 % interval of an accuracy near {p:.0%} on {n_test:,} test examples: ±{half_width:.1%}")

# %% [markdown]
# The parameter counts grow linearly with `r` (the `assert` checks the formula); the accuracies do not have to.
# The interval printed under the table is the uncertainty of *one* accuracy. Two models scored on the same tweets
# are compared with a paired test instead: `lowrank.comparison.mcnemar` on their per-tweet correctness, as in
# notebook 02, section 3 (the unpaired interval ignores the pairing and is too wide for that question). In the quick profile the runs are a few steps long and the
# accuracies say nothing about rank; run the sweep with `LOWRANK_PROFILE=full` to see whether rank 16 buys
# anything over rank 1 on this task.
#
# ## Exercise 3 — Classify your own sentences
#
# *Write a few sentences of your own, get the trained model's probability of "positive" for each, and check
# that the merged model gives the same answers.*

# %%
sentences = ["What a wonderful surprise, thank you so much!", "This is the worst service I have ever had.",
             "The train was late again.", "I can't wait for the weekend!"]
chosen = sweep[4]["model"].eval()
merged = lowrank.merge_adapters(copy.deepcopy(chosen)).eval()
batch = tokenizer(sentences, padding=True, truncation=True, max_length=profile.max_length, return_tensors="pt")
with torch.no_grad():
    probabilities = torch.softmax(chosen(**batch).logits, dim=-1)
    merged_probabilities = torch.softmax(merged(**batch).logits, dim=-1)
for sentence, p in zip(sentences, probabilities[:, 1].tolist()):
    print(f"P(positive) = {p:.2f}  {sentence}")
print("merged model, same answers:", torch.equal(probabilities.argmax(-1), merged_probabilities.argmax(-1)))
assert torch.allclose(probabilities, merged_probabilities, atol=1e-5)

# %% [markdown]
# `lowrank.predict` does the same on a tokenised dataset; for raw strings the tokenizer and a forward pass are
# all it takes. The quick profile's model has trained for a few steps only; run with `LOWRANK_PROFILE=full`
# before trusting its answers.
