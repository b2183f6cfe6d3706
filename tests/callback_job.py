"""A tiny 🤗 Trainer run with MagnitudeDirectionCallback, in-process or under ``torchrun``.

The data set is exactly one global batch (8 examples), so every optimizer step sees all of it
whatever the number of processes: one process with batch 8 and two with batch 4 each (DDP
averages their gradients) take the same steps, and the callback must report the same numbers.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/callback_job.py OUT full
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from lowrank.analysis.callback import MagnitudeDirectionCallback  # noqa: E402

EXAMPLES = 8
STEPS = 4


def tiny_model(method: str):
    from tests.conftest import make_tiny_distilbert

    model = make_tiny_distilbert(seed=0)
    if method == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin", "v_lin"], use_dora=True,
                                                 init_lora_weights="gaussian"))
    elif method == "lowrank":
        from lowrank import add_adapters

        torch.manual_seed(1)
        add_adapters(model, ["q_lin", "v_lin"], method="dora", rank=2, alpha=4)
    return model.train()


def examples() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 100, (EXAMPLES, 6), generator=generator)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": torch.tensor(i % 2)}
            for i in range(EXAMPLES)]


def run(out: str | Path, method: str = "full", processes: int = 1, every: int = 2) -> MagnitudeDirectionCallback:
    """Train ``STEPS`` steps, checkpoints every 2 steps, the callback measuring every ``every`` steps."""
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=EXAMPLES // processes, max_steps=STEPS,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        save_strategy="steps", save_steps=2, save_only_model=True, logging_strategy="no", report_to=[],
        use_cpu=True, seed=0, average_tokens_across_devices=False, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    callback = MagnitudeDirectionCallback(modules=r"(q_lin|v_lin)$", every=every, run=method, bootstrap=50,
                                          formats=("png",), verbose=False)
    Trainer(model=tiny_model(method), args=args, train_dataset=examples(), callbacks=[callback]).train()
    return callback


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], sys.argv[2], processes=int(os.environ.get("WORLD_SIZE", "1")))
