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
# # Solutions — A2, saving and sharing adapters
#
# Worked answers to the exercises of [A2](../in_practice/A2_saving_and_sharing.ipynb), an optional practitioner
# notebook beside the course path. Try each exercise before reading its solution; every solution checks its answer
# with an `assert`.
#
# About 10 s of work after the imports in either profile, on a 2-core laptop CPU (no training: an adapter with
# made-up values is saved once and loaded in the wrong places). To switch profile, set `profile="quick"` in the next
# cell and run from the top.

# %%
from lowrank.notebook import setup_notebook
setup = setup_notebook(profile=None, load=False, use_device=False)  # None: $LOWRANK_PROFILE (default "full"); "quick" for a live class

# %%
import copy
import json
import tempfile
from pathlib import Path

import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification

import lowrank
from lowrank import load_adapters, save_adapters
from lowrank.backbone import embedded_config

base, tokenizer = lowrank.load_backbone(setup.backbone)
adapted = lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="dora", rank=8, alpha=16)
with torch.no_grad():  # values as after training: B away from zero, magnitudes moved
    for _, layer in lowrank.adapter_layers(adapted):
        layer.lora_B.normal_(std=0.05)
        layer.magnitude.mul_(1 + 0.05 * torch.randn_like(layer.magnitude))
workdir = Path(tempfile.mkdtemp(prefix="lowrank-solutions-"))
saved = workdir / "dora-r8"
save_adapters(adapted, saved)
batch = tokenizer(["a wonderful, moving film", "the worst service I have ever had"], padding=True, return_tensors="pt")
with torch.no_grad():
    reference = adapted.eval()(**batch).logits
print(f"saved a DoRA adapter (q_lin, v_lin, r=8, alpha=16) in a temporary folder")


def load_error(model) -> str:
    """The message of the ValueError that loading the saved adapter into ``model`` raises ('' if none)."""
    try:
        load_adapters(model, saved)
    except ValueError as error:
        return str(error).replace(str(workdir), "<folder>")
    return ""


# %% [markdown]
# ## Exercise 1 — Read the error before you see it
#
# *A2 loaded the adapter into a model whose adapters have another rank. Predict the message for
# three other mismatches — another alpha, another method (LoRA), other targets (query, key and value) — then
# run them. Is the model left as it was?*

# %%
mismatches = {
    "alpha": lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="dora", rank=8, alpha=32),
    "method": lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="lora", rank=8, alpha=16),
    "targets": lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "k_lin", "v_lin"], method="dora", rank=8, alpha=16),
}
for field, model in mismatches.items():
    message = load_error(model)
    untouched = all(bool((layer.lora_B == 0).all()) for _, layer in lowrank.adapter_layers(model))
    print(f"{field}: {message}\n  model untouched (every B still zero): {untouched}\n")
    assert f"the file has {field}=" in message and f"the model's adapters have {field}=" in message
    assert untouched

# %% [markdown]
# Each message names the field and both values, and says what to do: load into a backbone without adapters
# (it then takes the file's settings) or add adapters with the file's settings. The check happens before
# any tensor is copied, so a refused load changes nothing.
#
# ## Exercise 2 — The wrong backbone
#
# *Load the adapter into (a) a DistilBERT of the same shapes but random weights, and (b) a smaller DistilBERT
# (`dim=192`, `hidden_dim=768`). Which load is refused? What does the accepted one compute?*

# %%
torch.manual_seed(1)
same_shapes = DistilBertForSequenceClassification(embedded_config()).eval()
smaller = DistilBertForSequenceClassification(DistilBertConfig(
    vocab_size=30522, dim=192, hidden_dim=768, n_layers=6, n_heads=12, num_labels=2)).eval()

message_same, message_smaller = load_error(same_shapes), load_error(smaller)
print("(a) same shapes, random weights, refused:", bool(message_same))
print("(b) smaller model:", message_smaller)
with torch.no_grad():
    wrong_logits = same_shapes.eval()(**batch).logits
print("(a) logits, right backbone:", [round(v, 3) for v in reference[0].tolist()],
      " random backbone:", [round(v, 3) for v in wrong_logits[0].tolist()])
assert message_same == "" and "has shape" in message_smaller
assert not torch.allclose(wrong_logits, reference, atol=1e-3)

# %% [markdown]
# A load checks names and shapes, not which weights lie under the adapter: the same-shape random model takes
# the adapter without a word and computes something else. The file does record a backbone name; compare it
# yourself when it matters:

# %%
recorded = json.loads((saved / "adapter_config.json").read_text())["backbone"]
print("the file's backbone:", recorded, "| the model it was saved from:", adapted.config.name_or_path)
assert recorded == adapted.config.name_or_path

# %% [markdown]
# ## Exercise 3 — Damage one byte
#
# *A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte range, then the
# bytes. Find which tensor holds the byte in the middle of the data, flip that byte in a copy of the file,
# and check that loading names that tensor.*

# %%
raw = bytearray((saved / "adapters.safetensors").read_bytes())
header_length = int.from_bytes(raw[:8], "little")
header = json.loads(raw[8:8 + header_length])
ranges = {name: entry["data_offsets"] for name, entry in header.items() if name != "__metadata__"}
middle = max(end for _, end in ranges.values()) // 2
holder = next(name for name, (start, end) in ranges.items() if start <= middle < end)
raw[8 + header_length + middle] ^= 0xFF

damaged = workdir / "damaged"
damaged.mkdir()
(damaged / "adapters.safetensors").write_bytes(bytes(raw))
try:
    load_adapters(copy.deepcopy(base), damaged)
    message = ""
except ValueError as error:
    message = str(error).replace(str(workdir), "<folder>")
print(f"the middle byte of the data belongs to {holder!r}")
print("load says:", message)
assert f"tensor {holder!r}" in message

# %% [markdown]
# safetensors itself would load those bytes without a word (any bit pattern is some float, perhaps a NaN): the digest
# recorded for every tensor at save time is what catches the flip and names the tensor.
