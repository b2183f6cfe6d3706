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
# # A2 — Saving and sharing adapters (in practice)
#
# *Optional practitioner material beside the course path: the path (01–06) never needs it.* An adapter is worth
# keeping: it is small (only the trainable tensors) and it can be loaded into the tool everyone uses, PEFT. This
# notebook trains a small DoRA adapter briefly, saves it, reloads it, exports it to PEFT's format, loads it with PEFT,
# and imports it back into the from-scratch layers, comparing logits at every hop; then it shows what each loader
# refuses.
#
# Full profile on a 2-core CPU: about 2 min with bf16 hardware (fp32 `torch.mm` 91 GFLOP/s per thread),
# 1 min in fp32 only (178 GFLOP/s); quick profile: ½ min in fp32 (90 GFLOP/s) ([measured how](../../docs/runtimes.md)).
# To switch profile, set `profile="quick"` (or `"full"`) in the next cell and run from the top.

# %%
from lowrank.notebook import setup_notebook
setup = setup_notebook(profile=None, load=True, use_device=False)  # None: $LOWRANK_PROFILE (default "full"); "quick" for a live class

# %%
import copy
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

import lowrank
from lowrank import export_peft, import_peft, load_adapters, save_adapters
from lowrank.training import predict, train

profile, base, tokenizer, data = setup.profile, setup.model, setup.tokenizer, setup.data

# %% [markdown]
# *Long cell* (about 10 s quick, 1 min full): a short DoRA training run to have an adapter
# worth saving. Interrupting the kernel stops the cell.

# %%
model = lowrank.add_adapters(copy.deepcopy(base), ["q_lin", "v_lin"], method="dora", rank=8, alpha=16)
run = train(model, data["train"], max_steps=profile.probe_steps, lr=2e-3, autocast_dtype=setup.autocast_dtype,
            description="DoRA")
probe = data["test"].select(range(min(256, len(data["test"]))))  # the test rows whose logits are compared
reference = predict(model, probe)
workdir = Path(tempfile.mkdtemp(prefix="lowrank-adapters-"))
print(f"trained {run.steps} steps; working in a temporary folder")

# %% [markdown]
# ## Save and reload
#
# `save_adapters` writes `adapters.safetensors` (the trainable tensors, with the configuration in its metadata)
# and a readable `adapter_config.json`. `load_adapters` on a *fresh* backbone adds the adapters the configuration
# names and fills them.
#
# Files are safetensors, never pickles: loading a file cannot run code. Both files of a save are written under
# temporary names and renamed into place, so a crash never leaves a half-written file, nor one save's configuration
# beside another's tensors (at worst the readable `adapter_config.json` is missing until the next save). Each
# safetensors file also records an XXH3-128 digest of every tensor, since safetensors has no checksum, and `lowrank`'s
# loads (`load_adapters`, `import_peft`) check them and name a tensor whose bytes changed.

# %%
# NBVAL_CHECK_OUTPUT
save_adapters(model, workdir / "mine")
for file in sorted((workdir / "mine").iterdir()):
    print(f"{file.name:>22}: {file.stat().st_size / 2**10:,.1f} KiB")
print(f"the whole model would be {sum(p.numel() * 4 for p in base.parameters()) / 2**20:.1f} MiB")
fresh, _ = lowrank.load_backbone(setup.backbone)
reloaded = load_adapters(fresh, workdir / "mine")
print("reloaded logits equal the trained model's:", torch.allclose(predict(reloaded, probe), reference, atol=1e-6))

# %% [markdown]
# ## Export to PEFT, load with PEFT
#
# `export_peft` writes PEFT's layout: `adapter_model.safetensors` with PEFT's key names (`lora_A.weight`,
# `lora_magnitude_vector` …) and an `adapter_config.json` with `use_dora=True`, explicit `target_modules`
# (PEFT has no default target list for DistilBERT) and the trained head as `modules_to_save`.

# %%
# NBVAL_CHECK_OUTPUT
export_peft(model, workdir / "peft")
plain, _ = lowrank.load_backbone(setup.backbone)
with_peft = PeftModel.from_pretrained(plain, str(workdir / "peft")).eval()
with torch.no_grad():
    peft_logits = predict(with_peft, probe)
print("PEFT config:", {k: with_peft.peft_config["default"].__dict__[k] for k in ("r", "lora_alpha", "use_dora")})
print("PEFT's logits equal ours (to 1e-5):", torch.allclose(peft_logits, reference, atol=1e-5))

# %% [markdown]
# ## Import a PEFT adapter into the from-scratch layers

# %%
# NBVAL_CHECK_OUTPUT
again, _ = lowrank.load_backbone(setup.backbone)
imported = import_peft(again, workdir / "peft")
print("adapter layers:", len(list(lowrank.adapter_layers(imported))),
      "of type", {type(layer).__name__ for _, layer in lowrank.adapter_layers(imported)})
print("imported logits equal the original's (to 1e-5):", torch.allclose(predict(imported, probe), reference, atol=1e-5))

# %% [markdown]
# ## When the folder does not fit
#
# Loading into a model that already has adapters compares method, rank, alpha, scaling rule, dropout and targets,
# and refuses a difference naming the field and both values (exercise 1 checks that the model is left as it was).
# A backbone of another size is refused at the first tensor whose shape differs, while one with the same shapes is
# accepted silently (the recorded backbone name is not compared; exercise 2 runs both cases). A damaged file is refused as damaged.

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

# %% [markdown]
# ## What PEFT's own loader checks
#
# `PeftModel.from_pretrained` (peft 0.21.2) reads the adapter's keys and shapes: it loads the state dict into the
# model with `load_state_dict(strict=False)`, which refuses a tensor whose shape differs from the model's (a
# `RuntimeError` naming the tensor and both shapes), and it warns about adapter tensors the file lacks. What it cannot
# check is the bytes: safetensors has no checksum, so a file whose values changed but whose header is intact loads
# silently. `lowrank`'s loaders also compare each tensor's recorded XXH3-128 digest. The cell shows both cases on the
# PEFT export above: an adapter config of another rank (wrong shapes), and one flipped byte in the tensor data.

# %%
# NBVAL_CHECK_OUTPUT
import json
import shutil

other_rank = workdir / "peft-other-rank"
shutil.copytree(workdir / "peft", other_rank)
config = json.loads((other_rank / "adapter_config.json").read_text())
config["r"] = 4  # the file's tensors keep rank 8
(other_rank / "adapter_config.json").write_text(json.dumps(config))
try:
    PeftModel.from_pretrained(lowrank.load_backbone(setup.backbone)[0], str(other_rank))
except RuntimeError as error:
    print("PEFT, other shapes:", next(line.strip() for line in str(error).splitlines() if "size mismatch" in line))

flipped = workdir / "peft-flipped"
shutil.copytree(workdir / "peft", flipped)
raw_bytes = bytearray((flipped / "adapter_model.safetensors").read_bytes())
raw_bytes[-1] ^= 0x40  # the top byte of the last number in the file: its exponent changes, the header does not
(flipped / "adapter_model.safetensors").write_bytes(bytes(raw_bytes))
accepted = PeftModel.from_pretrained(lowrank.load_backbone(setup.backbone)[0], str(flipped)).eval()
with torch.no_grad():
    changed = not torch.allclose(predict(accepted, probe), reference, atol=1e-5)
print("PEFT, one flipped byte: loaded without a word; logits changed:", changed)
try:
    import_peft(lowrank.load_backbone(setup.backbone)[0], flipped)
except ValueError as error:
    print("lowrank.import_peft, same file:", str(error).replace(str(workdir), "<folder>").split(" (")[0])

# %% [markdown]
# ## What you learned
#
# * An adapter is saved as its trainable tensors only (the cell after the save prints the file sizes next to the
#   model's),
#   in safetensors, so loading it cannot run code.
# * A save replaces its files by renames, so a crash leaves the old save or the new one (at worst without
#   `adapter_config.json`). Each tensor's digest is recorded: a truncated file is refused (above), and a flipped
#   byte is refused naming its tensor (exercise 3).
# * The same adapter reloads on a fresh backbone, exports to PEFT's format, loads with PEFT and imports back into
#   the from-scratch layers, with logits equal to 1e-5 at every hop.
# * A load into adapters of other settings is refused, naming the field and both values (exercise 1: the
#   model is left as it was); a backbone of another size is refused at the first tensor whose shape differs; one with the same
#   shapes is accepted silently (exercise 2).
# * PEFT's own loader checks keys and shapes, not bytes: a flipped byte loads silently there and is refused by
#   `lowrank.import_peft`, which checks each tensor's digest.
# * Next in this series: [A3](A3_your_own_checkpoints.ipynb) draws the DoRA paper's Figure 2 for checkpoints on disk.
#
# ## Exercises
#
# No training: the code of each runs in seconds on a 2-core laptop CPU, in the quick profile as in the full one.
# Checked solutions: [../solutions/A2_solutions.ipynb](../solutions/A2_solutions.ipynb).
#
# 1. **Read the error before you see it** *(about 10 minutes)*. This notebook loaded its adapter into adapters of
#    another rank. Predict the message for another alpha, another method (LoRA) and other targets (query, key and
#    value), then run the three loads. Is each model left as it was?
# 2. **The wrong backbone** *(about 10 minutes)*. Load a saved adapter into a DistilBERT of the same shapes with
#    random weights, and into a smaller one (`dim=192`, `hidden_dim=768`). Which load is refused? What do the
#    logits of the accepted one look like next to the right backbone's?
# 3. **Damage one byte** *(about 15 minutes)*. A safetensors file is an 8-byte header length, a JSON header with
#    each tensor's byte range, then the bytes. Find the tensor that holds the middle byte of the data, flip that
#    byte in a copy of the file, and check that loading names that tensor.
