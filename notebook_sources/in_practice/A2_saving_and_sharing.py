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
# # 05 — Adapters that travel: save, reload, and share with PEFT
#
# An adapter is worth keeping: it is small (only the trainable tensors) and it can be loaded into the tool
# everyone uses, PEFT. This notebook trains a small DoRA adapter briefly, saves it, reloads it, exports it to
# PEFT's format, loads it with PEFT, and imports it back into the from-scratch layers — comparing logits at
# every hop. The last section draws the DoRA paper's Figure 2 for a run saved on disk, as a researcher would for theirs.
#
# Files are safetensors, never pickles: loading a file cannot run code. Both files of a save are written under
# temporary names and renamed into place, so a crash never leaves a half-written file, nor one save's configuration
# beside another's tensors (at worst the readable `adapter_config.json` is missing until the next save). Each
# safetensors file also records an XXH3-128 digest of every tensor, since safetensors has no checksum, and `lowrank`'s
# loads (`load_adapters`, `import_peft`) check them and name a tensor whose bytes changed (PEFT's own loader checks
# nothing).

# %% [markdown]
# ### Running this notebook
#
# **Runtime, measured:** 40 s with `LOWRANK_PROFILE=quick`, 2½ min with `full`, on a 2-core machine whose CPU has AMX, so training ran in bf16 (the default, `LOWRANK_PRECISION=auto`: bf16 where the hardware multiplies it, else fp32). Both were measured two notebooks at a time, one torch thread each: quick under `make test` (fp32 `torch.mm` 2048³ at about 125–150 GFLOP/s per thread), full under `make course` (163 GFLOP/s per thread). Times scale roughly inversely with your machine's rate. In fp32 (`LOWRANK_PRECISION=fp32`, or a CPU without bf16 hardware) the previous full run took 2½ min on one thread.
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
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

import lowrank
from lowrank.notebook import setup_notebook
from lowrank.persistence import export_peft, import_peft, load_adapters, save_adapters
from lowrank.training import predict, seed_everything, train

setup = setup_notebook(load=True, use_device=False)
profile, base, tokenizer, data = setup.profile, setup.model, setup.tokenizer, setup.data

# %% [markdown]
# *Long cell* (9 s quick, 43 s full, measured as in the first cell): a short DoRA training run to have an adapter
# worth saving. Interrupting the kernel keeps what was
# trained.

# %%
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
    print(f"{file.name:>22}: {file.stat().st_size / 2**10:,.1f} KiB")
print(f"the whole model would be {sum(p.numel() * 4 for p in base.parameters()) / 2**20:.1f} MiB")
fresh, _ = lowrank.load_backbone(setup.backbone)
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
plain, _ = lowrank.load_backbone(setup.backbone)
with_peft = PeftModel.from_pretrained(plain, str(workdir / "peft")).eval()
with torch.no_grad():
    peft_logits = predict(with_peft, data["test"])
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
print("imported logits equal the original's (to 1e-5):", torch.allclose(predict(imported, data["test"]), reference, atol=1e-5))

# %% [markdown]
# ## When the folder does not fit
#
# Loading into a model that already has adapters compares method, rank, alpha, dropout and targets, and refuses a
# difference naming the field and both values; that model is left untouched. A backbone of another size is refused at
# the first tensor whose shape differs, while one with the same shapes is accepted silently (the recorded backbone
# name is not compared; exercise 2 runs both cases). A damaged file is refused as damaged.

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
# ## The DoRA paper's Figure 2 for your own runs
#
# Notebook 04 measured ΔM and ΔD on weights it kept in memory. A researcher's runs are checkpoints on disk — a
# 🤗 Trainer's `checkpoint-N` folders of a Llama, a BART or a ViT, full weights or PEFT adapters — often far
# larger than memory. Two tools, one arithmetic:
#
# * `python -m lowrank.analyze` reads only the matrices `--modules` selects, straight from the safetensors files,
#   one block of rows at a time: no model class, no `from_pretrained`, memory flat whatever the model's size (see
#   the README's benchmark; the course's `embedded` base is the exception, converted in memory). Adapters are
#   analysed from their factors `A`, `B` (and DoRA's `m`), never merged.
# * `MagnitudeDirectionCallback` measures the same numbers *during* a Trainer run (full fine-tuning, PEFT, or
#   `lowrank`'s adapters; under DDP on the main process only) and writes the CSV and figure at the end.
#
# Here a Trainer fine-tunes a PEFT DoRA adapter on the course's model with the callback attached, saving a
# checkpoint every `every` steps; then the command analyses those checkpoints, and the two must agree.

# %% [markdown]
# *Long cell* (12 s quick, 64 s full, measured as in the first cell): a 🤗 Trainer run. The Trainer, unlike `lowrank`'s `train`, does not catch an interrupt: interrupting
# the kernel here stops the notebook.

# %%
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from lowrank.analyze import main as analyze
from lowrank.trainer_callback import MagnitudeDirectionCallback

steps = profile.probe_steps
every = steps // 4
seed_everything(0)
backbone, _ = lowrank.load_backbone(setup.backbone)
peft_dora = get_peft_model(backbone, LoraConfig(r=8, lora_alpha=16, target_modules=["q_lin", "v_lin"], use_dora=True,
                                                modules_to_save=["pre_classifier", "classifier"]))
callback = MagnitudeDirectionCallback(modules=r"q_lin$", every=every, run="PEFT DoRA", out=workdir / "callback",
                                      bootstrap=500, verbose=False)
arguments = TrainingArguments(output_dir=str(workdir / "trainer-run"), max_steps=steps, learning_rate=2e-3,
                              per_device_train_batch_size=profile.batch_size, save_strategy="steps", save_steps=every,
                              save_only_model=True, logging_strategy="no", report_to=[], seed=0, disable_tqdm=True,
                              dataloader_pin_memory=False)
trainer = Trainer(model=peft_dora, args=arguments, train_dataset=data["train"].remove_columns("text"),
                  data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback])
trainer.remove_callback(PrinterCallback)  # it would print the run's timing, which differs on every machine
trainer.train()
print("checkpoints:", sorted(p.name for p in (workdir / "trainer-run").iterdir()))

# %% [markdown]
# The command on the Trainer's `output_dir` (`--run LABEL=DIR`; several runs side by side give one panel each, e.g.
# `--run ft=runs/ft lora=runs/lora dora=runs/dora`). `--base` is a folder, a hub name or `embedded`; left out, it is
# read from the adapters' `adapter_config.json`. In a shell: `python -m lowrank.analyze --run dora=DIR --base embedded
# --modules 'q_lin$' --out analysis/`. Besides notebook 04's pooled and within-checkpoint correlations it prints
# *per layer*: each layer's correlation over its own checkpoints, averaged over the layers (how one layer moves in
# time; notebook 06 uses it).

# %%
import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()) as log:
    status = analyze(["--run", f"PEFT DoRA={workdir / 'trainer-run'}", "--base", setup.backbone, "--modules",
                      "q_lin$", "--out", str(workdir / "command"), "--bootstrap", "500", "--no-progress"])
print(log.getvalue().replace(str(workdir), "<folder>"))
assert status == 0, "the analysis failed: see the message above"


# %%
# NBVAL_CHECK_OUTPUT
import csv


def read_points(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


live, saved = read_points(workdir / "callback" / "points.csv"), read_points(workdir / "command" / "points.csv")
print(f"{len(saved)} points: {len({r['module'] for r in saved})} query matrices × {len({r['step'] for r in saved})} "
      f"checkpoints; columns {list(saved[0])}")
same = [(a["module"], a["step"]) == (b["module"], b["step"])
        and all(abs(float(a[c]) - float(b[c])) <= 1e-9 * abs(float(b[c])) for c in ("delta_m", "delta_d"))
        for a, b in zip(live, saved)]
print("callback (live weights) and command (saved checkpoints) agree:", len(live) == len(saved) and all(same))

# %%
from IPython.display import Image

Image(filename=str(workdir / "command" / "dm_dd.png"), width=480)

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
#   the from-scratch layers, with the same logits at every hop.
# * A load into adapters of other settings is refused, naming the field and both values, before anything is
#   copied; a backbone of another size is refused at the first tensor whose shape differs; one with the same
#   shapes is accepted silently (exercise 2).
# * The DoRA paper's Figure 2 for checkpoints on disk: a Trainer callback measures it live, `python -m
#   lowrank.analyze` from the saved checkpoints, and the two agree.
#
# ## Exercises
#
# No training: the code of each runs in seconds on a 2-core laptop CPU, in the quick profile as in the full one.
# Checked solutions: [solutions/05_solutions.ipynb](solutions/05_solutions.ipynb).
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
