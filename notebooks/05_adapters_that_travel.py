# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 — Adapters that travel: save, reload, and share with PEFT
#
# An adapter is worth keeping: it is small (only the trainable tensors) and it can be loaded into the tool
# everyone uses, PEFT. This notebook trains a small DoRA adapter briefly, saves it, reloads it, exports it to
# PEFT's format, loads it with PEFT, and imports it back into the from-scratch layers — comparing logits at
# every hop.
#
# Files are safetensors, never pickles: loading a file cannot run code. A save is written to a temporary file
# and renamed into place, so a crash mid-save leaves the previous save intact.
#
# **Runtime on a 2-core laptop CPU:** about 15 seconds (`LOWRANK_PROFILE=quick`), about 1 minute (`full`), measured.

# %%
import copy
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

import lowrank
from lowrank.data import load_sentiment
from lowrank.persistence import export_peft, import_peft, load_adapters, save_adapters
from lowrank.profile import backbone_name, current_profile, dataset_name
from lowrank.training import predict, seed_everything, tokenize, train

profile = current_profile()
seed_everything(0)
base, tokenizer = lowrank.load_backbone(backbone_name())
data = tokenize(load_sentiment(dataset_name(), train_size=profile.train_size, eval_size=profile.eval_size, seed=0),
                tokenizer, profile.max_length)
model = lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="dora", rank=8, alpha=16)
run = train(model, data["train"], max_steps=profile.probe_steps, lr=2e-3, description="DoRA")
reference = predict(model, data["test"])
workdir = Path(tempfile.mkdtemp(prefix="lowrank-adapters-"))
print(f"trained {run.steps} steps; working in a temporary folder")

# %% [markdown]
# ## Save and reload
#
# `save_adapters` writes `adapters.safetensors` (the trainable tensors, with the configuration in its metadata)
# and a readable `adapter_config.json`. `load_adapters` on a *fresh* backbone adds the adapters the configuration
# names and fills them.

# %%
# NBVAL_CHECK_OUTPUT
save_adapters(model, workdir / "mine")
for file in sorted((workdir / "mine").iterdir()):
    print(f"{file.name:>22}: {file.stat().st_size / 2**20:.2f} MB")
print(f"the whole model would be {sum(p.numel() * 4 for p in base.parameters()) / 2**20:.1f} MB")
fresh, _ = lowrank.load_backbone(backbone_name())
reloaded = load_adapters(fresh, workdir / "mine")
print("reloaded logits equal the trained model's:", torch.allclose(predict(reloaded, data["test"]), reference, atol=1e-6))

# %% [markdown]
# ## Export to PEFT, load with PEFT
#
# `export_peft` writes PEFT's layout: `adapter_model.safetensors` with PEFT's key names (`lora_A.weight`,
# `lora_magnitude_vector` …) and an `adapter_config.json` with `use_dora=True`, explicit `target_modules`
# (PEFT has no default target list for DistilBERT) and the trained head as `modules_to_save`.

# %%
# NBVAL_CHECK_OUTPUT
export_peft(model, workdir / "peft")
plain, _ = lowrank.load_backbone(backbone_name())
with_peft = PeftModel.from_pretrained(plain, str(workdir / "peft")).eval()
with torch.no_grad():
    peft_logits = predict(with_peft, data["test"])
print("PEFT config:", {k: with_peft.peft_config["default"].__dict__[k] for k in ("r", "lora_alpha", "use_dora")})
print("PEFT's logits equal ours (to 1e-5):", torch.allclose(peft_logits, reference, atol=1e-5))

# %% [markdown]
# ## Import a PEFT adapter into the from-scratch layers

# %%
# NBVAL_CHECK_OUTPUT
again, _ = lowrank.load_backbone(backbone_name())
imported = import_peft(again, workdir / "peft")
print("adapter layers:", len(list(lowrank.adapter_layers(imported))),
      "of type", {type(layer).__name__ for _, layer in lowrank.adapter_layers(imported)})
print("imported logits equal the original's (to 1e-5):", torch.allclose(predict(imported, data["test"]), reference, atol=1e-5))

# %% [markdown]
# ## When the folder does not fit
#
# A folder from another rank, other targets or another backbone is refused with the first mismatching tensor and
# both shapes; a damaged file is refused as damaged. The model is left untouched.

# %%
# NBVAL_CHECK_OUTPUT
wrong_rank = lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="dora", rank=4, alpha=16)
try:
    load_adapters(wrong_rank, workdir / "mine")
except ValueError as error:
    print("other rank:", str(error).replace(str(workdir), "<folder>"))
damaged = workdir / "damaged"
damaged.mkdir()
(damaged / "adapters.safetensors").write_bytes((workdir / "mine" / "adapters.safetensors").read_bytes()[:1000])
try:
    load_adapters(copy.deepcopy(base), damaged)
except ValueError as error:
    print("truncated file:", str(error).replace(str(workdir), "<folder>").split(" (")[0])
