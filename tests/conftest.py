"""Shared fixtures: a tiny randomly initialised DistilBERT classifier (milliseconds per forward)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification


def make_tiny_distilbert(seed: int = 0, num_labels: int = 2) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=100, max_position_embeddings=32, n_layers=2, n_heads=2, dim=16, hidden_dim=32,
        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=num_labels,
    )
    return DistilBertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_model() -> DistilBertForSequenceClassification:
    return make_tiny_distilbert()


@pytest.fixture
def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}
