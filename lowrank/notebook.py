"""The first code cell of every notebook: settings, device, seed and (when asked) the model and data.

Each notebook of the course starts with the same steps: read the profile and the backbone and dataset
names (:mod:`lowrank.settings`), pick the device, seed every generator, and usually load the backbone and
the tokenized data at the profile's sizes. :func:`setup_notebook` does them in that order and prints
one line saying what runs, so that a live run shows at a glance which profile, model, data and device it
used. A notebook's whole preamble is one cell::

    from lowrank.notebook import setup_notebook
    setup = setup_notebook(profile=None, load=True)  # profile: None = $LOWRANK_PROFILE (default "full"), or "quick"

    profile, device, model, tokenizer, data = setup.profile, setup.device, setup.model, setup.tokenizer, setup.data

Loading does not touch the global random generators (:func:`lowrank.load_backbone` seeds the head in a
forked generator; :func:`lowrank.load_sentiment` splits with its own seed), so loading here or in a
later cell gives the same model and data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lowrank.settings import (
    Profile,
    backbone_display_name,
    backbone_name,
    current_profile,
    dataset_display_name,
    dataset_name,
    default_device,
    precision_name,
    training_dtype,
)

if TYPE_CHECKING:
    from datasets import DatasetDict
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class NotebookSetup:
    """What a notebook needs before its first lesson; ``str()`` is the one line it prints.

    ``model``, ``tokenizer``, ``raw`` and ``data`` are None until :meth:`load` runs (or
    ``setup_notebook(load=True)``).
    """

    profile: Profile
    device: torch.device  # where the notebook trains: the default device, or the CPU for a CPU-only notebook
    backbone: str  # the name to pass to lowrank.load_backbone ($LOWRANK_BACKBONE)
    dataset: str  # the name to pass to lowrank.load_sentiment ($LOWRANK_DATASET)
    seed: int
    model: PreTrainedModel | None = None  # the backbone with a fresh head seeded by ``seed``, on the CPU
    tokenizer: PreTrainedTokenizerBase | None = None
    raw: DatasetDict | None = None  # train/validation/test text and labels at the profile's sizes
    data: DatasetDict | None = None  # ``raw`` tokenized to the profile's max_length

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The precision the course trains in on this notebook's device, for ``train(..., autocast_dtype=...)``:
        ``$LOWRANK_PRECISION`` resolved on the hardware (:func:`lowrank.settings.training_dtype`)."""
        return training_dtype(self.device)

    def load(self) -> NotebookSetup:
        """Load the backbone, the data at the profile's sizes (split by ``seed``) and tokenize it; return self."""
        from lowrank.backbone import load_backbone
        from lowrank.data import load_sentiment
        from lowrank.training import tokenize

        self.model, self.tokenizer = load_backbone(self.backbone, seed=self.seed)
        self.raw = load_sentiment(self.dataset, train_size=self.profile.train_size,
                                  eval_size=self.profile.eval_size, seed=self.seed)
        self.data = tokenize(self.raw, self.tokenizer, self.profile.max_length)
        return self

    def __str__(self) -> str:
        p, threads = self.profile, torch.get_num_threads()
        return (f"profile {p.name} ({p.train_size:,} train / {p.eval_size:,} eval examples, {p.epochs} "
                f"epoch{'s' if p.epochs != 1 else ''}) · backbone {backbone_display_name(self.backbone)} · "
                f"data {dataset_display_name(self.dataset)} · device {self.device}, "
                f"{threads} torch thread{'s' if threads != 1 else ''} · training precision {precision_name(self.device)}")


def setup_notebook(*, profile: str | None = None, load: bool = False, seed: int = 0,
                   use_device: bool = True) -> NotebookSetup:
    """Read the settings, seed Python, NumPy and torch with ``seed``, print one line, optionally load.

    Args:
        profile: ``"quick"`` or ``"full"`` to choose the profile from inside the notebook (it sets
            ``$LOWRANK_PROFILE`` for this kernel, so later cells and ``lowrank`` functions see the same one);
            None keeps ``$LOWRANK_PROFILE`` (default ``full``).
        load: also load the backbone and the tokenized data (:meth:`NotebookSetup.load`).
        seed: seeds every generator (:func:`lowrank.training.seed_everything`), the classifier head and
            the data split.
        use_device: the notebook moves its training to :func:`lowrank.settings.default_device` (a GPU when
            there is one); False for a notebook that runs on the CPU whatever the machine.
    """
    import os

    from lowrank.settings import ENV_VAR, PROFILES
    from lowrank.training import seed_everything

    if profile is not None:
        if profile not in PROFILES:
            raise ValueError(f"profile={profile!r} is not a profile; use one of {sorted(PROFILES)} (or None)")
        os.environ[ENV_VAR] = profile
    setup = NotebookSetup(profile=current_profile(), device=default_device() if use_device else torch.device("cpu"),
                          backbone=backbone_name(), dataset=dataset_name(), seed=seed)
    seed_everything(seed)
    print(setup)
    if load:
        setup.load()
    return setup
