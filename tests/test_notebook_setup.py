"""lowrank.notebook: the notebooks' first cell gives what the code it replaced gave, and prints one line."""

from __future__ import annotations

import random

import numpy as np
import torch

import lowrank
from lowrank.data import load_sentiment
from lowrank.notebook import setup_notebook
from lowrank.settings import PROFILES, backbone_display_name, dataset_display_name
from lowrank.training import seed_everything, tokenize


def test_one_line_names_profile_backbone_data_device_and_threads(monkeypatch, capsys):
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.delenv("LOWRANK_BACKBONE", raising=False)
    monkeypatch.delenv("LOWRANK_DATASET", raising=False)
    setup = setup_notebook(use_device=False)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed == f"{setup}\n"
    assert printed.startswith("profile quick (512 train / 256 eval examples, 1 epoch) · ")
    assert "all-MiniLM-L6-v2 (DistilBERT layout)" in printed and "tweet sentiment (embedded)" in printed
    threads = torch.get_num_threads()
    assert f"device cpu, {threads} torch thread{'s' if threads != 1 else ''}" in printed
    assert setup.profile == PROFILES["quick"] and setup.model is None and setup.data is None


def test_seeds_like_seed_everything(monkeypatch):
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    setup_notebook(seed=3)
    after_setup = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert after_setup == (random.random(), np.random.rand(), torch.rand(1).item())


def test_load_gives_what_the_notebooks_built_by_hand(monkeypatch):
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.delenv("LOWRANK_BACKBONE", raising=False)
    monkeypatch.delenv("LOWRANK_DATASET", raising=False)
    setup = setup_notebook(load=True)
    after_setup = torch.rand(1)  # loading leaves the global generator where seeding put it

    seed_everything(0)
    model, tokenizer = lowrank.load_backbone("embedded")
    raw = load_sentiment("embedded", train_size=512, eval_size=256, seed=0)
    data = tokenize(raw, tokenizer, 64)
    assert torch.equal(after_setup, torch.rand(1))
    for (name, expected), (_, got) in zip(model.state_dict().items(), setup.model.state_dict().items()):
        assert torch.equal(expected, got), name
    for split in raw:
        assert setup.raw[split]["text"] == raw[split]["text"]
        assert setup.data[split]["input_ids"] == data[split]["input_ids"]


def test_display_names():
    assert backbone_display_name("embedded") == "all-MiniLM-L6-v2 (DistilBERT layout)"
    assert dataset_display_name("embedded") == "tweet sentiment (embedded)"
    assert backbone_display_name("distilbert-base-uncased") == "distilbert-base-uncased"
    assert dataset_display_name("imdb") == "IMDB reviews"
