"""Shared fixtures: a tiny randomly initialised DistilBERT classifier (milliseconds per forward)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from transformers import DistilBertForSequenceClassification

from tests.helpers import make_tiny_distilbert

__all__ = ["make_tiny_distilbert"]  # test_persistence and test_analyze import it from here


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
