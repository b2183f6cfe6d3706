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
# # A3 — Figure 2 for your own checkpoints (in practice)
#
# *Optional practitioner material beside the course path: the path (01–06) never needs it.* Notebook 04 drew the
# DoRA paper's Figure 2 (ΔM against ΔD) from weights it kept in memory. Here the same numbers come from a run of
# yours: measured live during a 🤗 Trainer run by a callback, and from its saved checkpoints by the command
# `python -m lowrank.analyze`; the two must agree.
#
# Full profile on a 2-core CPU: about 1½ min with bf16 hardware (fp32 `torch.mm` 91 GFLOP/s per thread),
# 1 min in fp32 only (178 GFLOP/s); quick profile: 20 s in fp32 (90 GFLOP/s) ([measured how](../../docs/runtimes.md)).
# To switch profile, set `profile="quick"` (or `"full"`) in the next cell and run from the top.

# %%
from lowrank.notebook import setup_notebook
setup = setup_notebook(profile=None, load=True, use_device=False)  # None: $LOWRANK_PROFILE (default "full"); "quick" for a live class

# %% [markdown]
# ## Two tools, one arithmetic
#
# A researcher's runs are checkpoints on disk — a Trainer's `checkpoint-N` folders of a Llama, a BART or a ViT, full
# weights or PEFT adapters — often far larger than memory.
#
# * `python -m lowrank.analyze` reads only the matrices `--modules` selects, straight from the safetensors files, one
#   block of rows at a time: no model class, no `from_pretrained`, memory flat whatever the model's size (the course's
#   `embedded` base is the exception, converted in memory). Adapters are analysed from their factors `A`, `B` (and
#   DoRA's `m`), never merged.
# * `MagnitudeDirectionCallback` measures the same numbers *during* a Trainer run (full fine-tuning, PEFT, or
#   `lowrank`'s adapters; under DDP on the main process only) and writes the CSV and figure at the end.
#
# Both compute, for each selected matrix and checkpoint, the paper's ΔM (eq. 3: mean absolute change of the rows'
# norms) and ΔD (eq. 4: mean of 1 − cosine between each row and its pretrained row), as notebook 04 does; a row of
# `nn.Linear.weight` is one output feature, the paper's column. Here a Trainer fine-tunes a PEFT DoRA adapter on the
# course's model with the callback attached, saving a checkpoint every `every` steps; then the command analyses those
# checkpoints.

# %% [markdown]
# *Long cell* (about 15 s quick, 1¼ min full): a 🤗 Trainer run. Interrupting the kernel stops the cell.

# %%
import tempfile
from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

import lowrank
from lowrank.analysis.callback import MagnitudeDirectionCallback
from lowrank.training import seed_everything

profile, tokenizer, data = setup.profile, setup.tokenizer, setup.data
workdir = Path(tempfile.mkdtemp(prefix="lowrank-analysis-"))
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
# ## The command
#
# The command on the Trainer's `output_dir` (`--run LABEL=DIR`; several runs side by side give one panel each, e.g.
# `--run ft=runs/ft lora=runs/lora dora=runs/dora`). `--base` is a folder, a hub name or `embedded`; left out, it is
# read from the adapters' `adapter_config.json`. In a shell: `python -m lowrank.analyze --run dora=DIR --base embedded
# --modules 'q_lin$' --out analysis/`. Besides notebook 04's pooled and within-checkpoint correlations it prints
# *per layer*: each layer's correlation over its own checkpoints, averaged over the layers (how one layer moves in
# time; notebook 05 uses it).

# %%
import contextlib
import io

from lowrank.analyze import main as analyze

with contextlib.redirect_stdout(io.StringIO()) as log:
    status = analyze(["--run", f"PEFT DoRA={workdir / 'trainer-run'}", "--base", setup.backbone, "--modules",
                      "q_lin$", "--out", str(workdir / "command"), "--bootstrap", "500", "--no-progress"])
print(log.getvalue().replace(str(workdir), "<folder>"))
assert status == 0, "the analysis failed: see the message above"


# %% [markdown]
# ## The callback and the command agree
#
# The callback measured the live weights at the steps the Trainer saved; the command read the saved files. Same
# matrices, same steps, same numbers (to 1e-9, relative):

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

# %% [markdown]
# ## The run's magnitude/direction plot
#
# The command's figure: one point per query matrix and checkpoint, ΔD across, ΔM up, as in the paper's Figure 2.
# A run this short (the profile's `probe_steps`) shows where the first steps go, not a trained adapter's pattern:
# notebook 04 trains long enough to read one, and notebook 05 explains why the slope's sign depends on the run.

# %%
from IPython.display import Image

Image(filename=str(workdir / "command" / "dm_dd.png"), width=480)

# %% [markdown]
# ## What you learned
#
# * `python -m lowrank.analyze --run LABEL=DIR` draws Figure 2 for a run's checkpoints on disk, reading only the
#   selected matrices, block by block, and analysing adapters from their factors without merging them.
# * `MagnitudeDirectionCallback` measures the same ΔM and ΔD during a Trainer run; on the same steps the two agree.
# * Its CSV (`points.csv`: run, method, module, layer, step, ΔM, ΔD) and correlations are what to compare across
#   runs; a short run's plot shows its first steps, not a trained method's pattern.
