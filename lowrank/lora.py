"""LoRA: a frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2021).

Taught in notebook 01: section 2 (the formula, with PyTorch's axes), section 3 (why ``alpha / rank``),
section 5 (merging).

PyTorch stores ``nn.Linear.weight`` as ``[out_features, in_features]``, so the update is

    W' = W + (alpha / rank) * B @ A,   A: [rank, in_features],   B: [out_features, rank].

``B`` starts at zero, so ``W' = W`` at step 0; ``A`` is Kaiming-uniform as in PEFT.

The scaling is ``alpha / rank``, as in the LoRA paper and PEFT, so that results compare with theirs.
What it does to the step size is measured in notebook 01, section 3 (one AdamW step, ranks 1 to 64):
scaling by ``alpha`` alone makes the first update grow with the rank; ``alpha / rank`` over-corrects, the
first update shrinking instead; ``alpha / sqrt(rank)`` (rsLoRA) keeps it about flat. ``scaling`` is one
attribute: set it to try another rule. A save records the rule (``alpha/rank`` or ``alpha/sqrt(rank)``,
PEFT's ``use_rslora``) and refuses any other value, which no file could rebuild.

Precision: on a half-precision base (fp16/bf16) the adapter parameters are kept in fp32, as
PEFT's ``autocast_adapter_dtype`` does, so that small updates are not rounded away; the matmuls
run in the base weight's dtype, or in autocast's dtype under ``torch.autocast``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lowrank._checks import check_adapter_args


def adapter_dtype(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the adapter parameters: fp32 for a half-precision base, else the base's."""
    return torch.float32 if base_dtype in (torch.float16, torch.bfloat16) else base_dtype


def compute_dtype(x: torch.Tensor, base: nn.Linear) -> torch.dtype:
    """The dtype the layer's matmuls run in: autocast's when it is on for ``x``'s device, else the base weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return base.weight.dtype


def refuse_non_finite(weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise a ``ValueError`` naming each ``(name, weight)`` that holds NaN or inf (PEFT's ``safe_merge`` check)."""
    broken = [name for name, weight in weights if not torch.isfinite(weight).all()]
    if broken:
        raise ValueError(f"merging would write NaN or inf into {', '.join(broken)}; nothing was merged")


class LoRALinear(nn.Module):
    """A frozen linear layer with a trainable rank-``rank`` update.

    Args:
        base: the pretrained layer; its weight and bias are frozen (``requires_grad=False``).
        rank: the rank ``r`` of the update, any positive integer. It is not capped at ``min(in, out)``:
            above that, ``B @ A`` still has rank at most ``min(in, out)`` and the extra parameters add
            nothing (``targets_from_toggles(head=True)`` with ``rank=8`` does this to a 2-output classifier).
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
        self.merged = False
        factory = {"device": base.weight.device, "dtype": adapter_dtype(base.weight.dtype)}
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

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The parameters that train: everything but the frozen base layer's."""
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B(A(x))`` as two thin matmuls in the compute dtype, never the ``[out, in]`` matrix ``B @ A``.

        The scaling multiplies the ``rank`` numbers per token between the two matmuls, not the
        ``out_features`` after them: a pass over a thin tensor instead of a wide one, forward and backward.
        """
        dtype = compute_dtype(x, self.base)
        hidden = F.linear(x.to(dtype), self.lora_A.to(dtype)) * self.scaling
        return F.linear(hidden, self.lora_B.to(dtype))

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B(A(dropout(x)))``."""
        return self._branch(self.lora_dropout(x))

    def _merged_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError(f"this {type(self).__name__} is merged into its base weight: the adapters would get "
                               "no gradient; call unmerge() before training (or train a fresh adapter)")
        return self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._merged_forward(x)
        return self.base(x) + self.lora_branch(x)

    def low_rank_update(self) -> torch.Tensor:
        """The ``[out, in]`` matrix ``(alpha / rank) * B @ A`` (rank at most ``rank``): PEFT's ``get_delta_weight``.

        For DoRA too this is ``s * B @ A``, the change of the direction ``V``, not of the layer's weight:
        see :meth:`merged_minus_base`.
        """
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged_minus_base(self) -> torch.Tensor:
        """The ``[out, in]`` change that merging makes to the base weight: ``merged_weight() - W0``.

        For LoRA it is :meth:`low_rank_update`; for DoRA it also holds the magnitude's rescaling of every row,
        so it is not ``s * B @ A``.
        """
        return self.low_rank_update()

    def merged_weight(self) -> torch.Tensor:
        """``W0 + (alpha / rank) * B @ A``: the weight of an ``nn.Linear`` that computes this layer in eval mode."""
        if self.merged:
            return self.base.weight
        return self.base.weight + self.low_rank_update()

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Write ``merged_weight()`` into the base layer's weight, in place, and return the base layer.

        Consumes no randomness and keeps the base layer itself (its class, hooks and device).
        Raises ``ValueError``, writing nothing, if the merged weight holds NaN or inf. Afterwards
        ``forward`` is the base layer's; :meth:`unmerge` undoes the merge.
        """
        if not self.merged:
            weight = self.merged_weight()
            refuse_non_finite([(f"this {type(self).__name__}", weight)])
            self.base.weight.copy_(weight)
            self.merged = True
        return self.base

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: subtract the update again (exact up to the rounding of the weight's dtype)."""
        if not self.merged:
            raise RuntimeError("unmerge() without merge(): the base weight holds no update")
        self.base.weight.sub_(self.low_rank_update().to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        merged = ", merged" if self.merged else ""
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}{merged}"
