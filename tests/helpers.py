"""Helpers shared by the tests: tiny models and data, randomised adapters, PEFT twins, a fixed dropout mask."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from datasets import Dataset
from peft import PeftModel
from torch import nn
from transformers import DistilBertConfig, DistilBertForSequenceClassification

from lowrank import DoRALinear, LoRALinear, add_adapters, adapter_layers
from lowrank.adapter_files.peft_interop import peft_twin


def make_tiny_distilbert(seed: int = 0, num_labels: int = 2) -> DistilBertForSequenceClassification:
    """A randomly initialised 2-layer DistilBERT classifier, hidden 16 (milliseconds per forward)."""
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=100, max_position_embeddings=32, n_layers=2, n_heads=2, dim=16, hidden_dim=32,
        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=num_labels,
    )
    return DistilBertForSequenceClassification(config).eval()


def randomize(layer: LoRALinear, seed: int = 0) -> LoRALinear:
    """Give B (and the magnitude) non-trivial values, as after some training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
        if isinstance(layer, DoRALinear):
            layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=generator))
    return layer


def tiny_split(n: int = 24, easy: bool = False) -> Dataset:
    """Tokenised rows of 3 to 7 ids in 1..99, labels alternating. ``easy``: the first id gives the label away."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 3 + i % 5
        ids = torch.randint(1, 100, (length,), generator=generator).tolist()
        if easy:
            ids[0] = 5 + i % 2
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "label": i % 2})
    return Dataset.from_list(rows)


class FixedMaskDropout(nn.Module):
    """Dropout whose mask depends only on ``seed`` and the input's shape (training mode only).

    Two layers given the same seed drop the same entries, so two implementations can be compared
    with dropout acting.
    """

    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(self.seed)) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def peft_pair(model: nn.Module, method: str, targets: Sequence[str], rank: int = 4, alpha: float = 8,
              dropout: float = 0.0) -> tuple[nn.Module, PeftModel, list[tuple[LoRALinear, nn.Module]]]:
    """``model`` adapted by lowrank (randomised weights) and its PEFT twin (:func:`lowrank.adapter_files.peft_interop.peft_twin`).

    Returns ``(ours, theirs, layers)`` with ``layers`` the pairs ``(our layer, PEFT layer)``. With
    dropout, each pair drops the same entries (:class:`FixedMaskDropout`, one seed per layer).
    """
    ours = add_adapters(copy.deepcopy(model), targets, method=method, rank=rank, alpha=alpha, dropout=dropout)
    for index, (_, layer) in enumerate(adapter_layers(ours)):
        randomize(layer, seed=index)
    theirs, layers = peft_twin(ours, model)
    if dropout > 0:
        for index, (layer, peft_layer) in enumerate(layers):
            layer.lora_dropout = FixedMaskDropout(layer.dropout_p, index)
            peft_layer.lora_dropout["default"] = FixedMaskDropout(layer.dropout_p, index)
    return ours, theirs, layers
