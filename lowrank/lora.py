"""LoRA: a frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2021).

PyTorch stores ``nn.Linear.weight`` as ``[out_features, in_features]``, so the update is

    W' = W + (alpha / rank) * B @ A,   A: [rank, in_features],   B: [out_features, rank].

``B`` starts at zero, so ``W' = W`` at step 0; ``A`` is Kaiming-uniform as in PEFT.
Scaling by ``alpha / rank`` (not ``alpha``) keeps the size of the update roughly
independent of ``rank``, so changing ``rank`` does not silently change the learning rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lowrank._checks import check_adapter_args


class LoRALinear(nn.Module):
    """A frozen linear layer with a trainable rank-``rank`` update.

    Args:
        base: the pretrained layer; its weight and bias are frozen (``requires_grad=False``).
        rank: the rank ``r`` of the update, ``1 <= r <= min(in, out)``.
        alpha: the LoRA scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout probability applied to the input of the LoRA branch only.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        check_adapter_args(base, rank, alpha, dropout)
        super().__init__()
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout_p = float(dropout)
        self.scaling = self.alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def _unscaled_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``B(A(dropout(x)))`` as two thin matmuls: never forms the ``[out, in]`` matrix ``B @ A``."""
        return F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B(A(dropout(x)))``."""
        return self._unscaled_branch(x) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # base(x) + scaling * B(A(dropout(x))), the scaling fused into the addition (one pass, not two)
        return torch.add(self.base(x), self._unscaled_branch(x), alpha=self.scaling)

    def low_rank_update(self) -> torch.Tensor:
        """The ``[out, in]`` matrix ``(alpha / rank) * B @ A`` (rank at most ``rank``)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The ``[out, in]`` update ``merged_weight() - W``; for LoRA, ``(alpha / rank) * B @ A``."""
        return self.low_rank_update()

    def merged_weight(self) -> torch.Tensor:
        """``W + delta``: the weight of an ``nn.Linear`` that computes this layer in eval mode."""
        return self.base.weight + self.delta_weight()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}"
