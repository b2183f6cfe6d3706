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
# # Solutions — notebook 02, LoRA in a pretrained model
#
# Try each exercise before reading its solution. Every solution checks its answer with an `assert`.
#
# Exercise 1 trains nothing. Exercise 2's sweep follows the profile: in quick it trains each rank for a few steps
# and tests on 64 tweets, so its accuracies are noise and it only shows the code working; in full each rank trains
# as long as notebook 02's runs. Exercise 3 always trains at the full profile's sizes, whatever the profile, so that
# its answers mean something; its cell prints how long that took.

# %%
import copy
import time

import datasets
import torch

import lowrank
from lowrank.comparison import mcnemar
from lowrank.notebook import setup_notebook
from lowrank.training import predict, train

setup = setup_notebook(profile=None, load=True)  # None: $LOWRANK_PROFILE (default "full")
profile, device, model, tokenizer, data = setup.profile, setup.device, setup.model, setup.tokenizer, setup.data
datasets.disable_progress_bars()  # keep the tokenizer's progress bars out of the solutions' outputs

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
# *Train LoRA on the query and value projections at ranks 1, 4 and 16 (`alpha=2 * r`, so `α/r` stays 2; `lr=2e-3`),
# tabulate test accuracy against trainable parameters, and say which differences are real with
# `lowrank.comparison.mcnemar`.*
#
# The cost of a rank is `2 · 6 · r · (384 + 384)` adapter parameters (query and value, six layers) on top of
# the head: linear in `r`. What it buys is the question.

# %%
head_only = lowrank.count_parameters(lowrank.freeze_all_but_head(copy.deepcopy(model))).trainable
quick = profile.name == "quick"
budget = dict(max_steps=4, batch_size=8) if quick else dict(epochs=profile.epochs, batch_size=profile.batch_size)
test = data["test"].select(range(64)) if quick else data["test"]
test_labels = torch.as_tensor(test["label"])
sweep, started = {}, time.perf_counter()
for rank in (1, 4, 16):
    candidate = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], method="lora", rank=rank,
                                     alpha=2 * rank).to(device)
    run = train(candidate, data["train"], lr=2e-3, seed=0, progress=False, autocast_dtype=setup.autocast_dtype,
                description=f"LoRA q,v r={rank}", **budget)  # the precision notebook 02 trains in
    right = (predict(candidate, test).argmax(-1) == test_labels).tolist()  # per-tweet correctness, for McNemar
    sweep[rank] = {"steps": run.steps, "right": right, "trainable": lowrank.count_parameters(candidate).trainable}
print(f"the sweep took {time.perf_counter() - started:.0f} s ({profile.name} profile)")
print(f"{'rank':>4} {'steps':>6} {'trainable':>10} {'adapters':>9} {'test acc':>9}")
for rank, row in sweep.items():
    print(f"{rank:>4} {row['steps']:>6} {row['trainable']:>10,} {row['trainable'] - head_only:>9,} "
          f"{sum(row['right']) / len(row['right']):>9.1%}")
    assert row["trainable"] - head_only == 2 * 6 * rank * (384 + 384)
print(f"\npaired comparisons on the same {len(test):,} test tweets:")
comparisons = {(a, b): mcnemar(sweep[a]["right"], sweep[b]["right"]) for a, b in [(1, 4), (4, 16), (1, 16)]}
for (a, b), comparison in comparisons.items():
    print(f"rank {a} vs rank {b}: {comparison}")
for (a, b), comparison in comparisons.items():  # only the discordant tweets separate two accuracies
    assert comparison.only_first_right - comparison.only_second_right == sum(sweep[a]["right"]) - sum(sweep[b]["right"])

# %% [markdown]
# The parameter counts grow linearly with `r` (the `assert` checks the formula); the accuracies do not have to.
# Which differences are real is what the McNemar lines say: only the tweets where exactly one of the two models is
# right count, and a p-value above 0.05 means this test set cannot tell the two ranks apart. In the full profile
# each accuracy has a standard error of about a point (1,000 test tweets; notebook 02, section 6), so a gap under
# ~2 points between two ranks is not resolvable whatever its sign. Each rank trained once, with one seed, so this
# compares three trained models, not three ranks in general: if the accuracies happen to rise with the rank, read the
# rank 1 against rank 16 line before believing that a larger rank did better. In the quick profile the runs are 4 steps long and
# the test set 64 tweets: the table shows the code working, not an answer.
#
# ## Exercise 3 — Classify your own sentences
#
# *Write a few sentences of your own, get a trained model's probability of "positive" for each, and check that
# the merged model gives the same answers.*
#
# A model trained for the quick profile's few steps has barely left its random head, so its probabilities would
# say little about the sentences. So this solution trains its own LoRA q,v model on the **full profile's data**,
# whatever profile this notebook runs in: 200 steps of 16 tweets drawn from the full profile's training split (60 in
# the quick profile, enough for the two clear sentences, and a third of the wait in a live class), tested on its test
# split (the cell prints the test size).

# %%
from lowrank.data import load_sentiment
from lowrank.settings import PROFILES, dataset_name
from lowrank.training import accuracy, tokenize

full = PROFILES["full"]
full_data = tokenize(load_sentiment(dataset_name(), train_size=full.train_size, eval_size=full.eval_size, seed=0),
                     tokenizer, full.max_length)
started = time.perf_counter()
chosen = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], rank=8, alpha=16).to(device)
train(chosen, full_data["train"], max_steps=200 if profile.name == "full" else 60, batch_size=16, lr=2e-3, seed=0,
      description="LoRA q,v, full sizes", autocast_dtype=setup.autocast_dtype)
print(f"trained in {time.perf_counter() - started:.0f} s; test accuracy on {len(full_data['test']):,} tweets: "
      f"{accuracy(chosen, full_data['test']):.1%}")

sentences = ["What a wonderful surprise, thank you so much!", "This is the worst service I have ever had.",
             "The train was late again.", "I can't wait for the weekend!"]
merged = lowrank.merge_adapters(copy.deepcopy(chosen)).eval()
batch = tokenizer(sentences, padding=True, truncation=True, max_length=full.max_length, return_tensors="pt").to(device)
with torch.no_grad():
    probabilities = torch.softmax(chosen.eval()(**batch).logits, dim=-1)
    merged_probabilities = torch.softmax(merged(**batch).logits, dim=-1)
for sentence, p in zip(sentences, probabilities[:, 1].tolist()):
    print(f"P(positive) = {p:.2f}  {sentence}")
print("merged model, same answers:", torch.equal(probabilities.argmax(-1), merged_probabilities.argmax(-1)))
assert torch.allclose(probabilities, merged_probabilities, atol=1e-5)
assert probabilities[0, 1] > 0.5 > probabilities[1, 1], "the clearly positive and clearly negative sentences"

# %% [markdown]
# The clearly positive and clearly negative sentences land on either side of 0.5 (the last `assert` checks it);
# the late train, a complaint without a sentiment word, and the weekend are for you to judge. `lowrank.predict` does
# the same on a tokenised dataset; for raw strings the tokenizer and a forward pass are all it takes.
