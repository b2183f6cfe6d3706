"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024).

Each output feature's weight row is split into a magnitude and a direction,

    W' = m * V / ||V||_row,   V = W0 + (alpha / rank) * B @ A,   m initialised to ||W0||_row.

The paper's "columns" are output features, i.e. *rows* of ``nn.Linear.weight``
(``[out, in]``), so the norm is over ``dim=1`` and ``m`` has shape ``[out_features]``.
Following the paper's section 4.3, ``||V||`` is treated as a constant in backprop
(detached), which saves the memory of its graph at no cost in accuracy.

Forward without materialising a weight that needs a gradient: with
``g = m / ||V||`` (norm detached),

    y = g * (x @ W0.T + scaling * B(A(x))) + bias,

which equals ``F.linear(x, m[:, None] * V / ||V||, bias)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowrank.lora import LoRALinear


class DoRALinear(LoRALinear):
    """A frozen linear layer adapted by DoRA: a trainable magnitude and a LoRA direction update.

    Args:
        base, rank, alpha, dropout: as for :class:`~lowrank.lora.LoRALinear`.
        detach_norm: treat ``||V||_row`` as a constant in backprop (paper section 4.3).
            ``False`` backpropagates through the norm: same forward, more memory.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        detach_norm: bool = True,
    ) -> None:
        super().__init__(base, rank, alpha, dropout)
        self.detach_norm = detach_norm
        with torch.no_grad():
            self.magnitude = nn.Parameter(base.weight.norm(p=2, dim=1).clone())
        self._cached_norm: torch.Tensor | None = None
        self._cache_key: tuple[int, ...] | None = None

    def _direction_norm_key(self) -> tuple[int, ...]:
        tensors = (self.base.weight, self.lora_A, self.lora_B)
        return tuple(v for t in tensors for v in (t.data_ptr(), t._version))

    def direction_norm(self) -> torch.Tensor:
        """``||W0 + scaling * B @ A||`` per output row, shape ``[out_features]``.

        Detached unless ``detach_norm`` is False and autograd is recording. In eval mode the
        value is cached and recomputed only when the base weight or the factors change.
        """
        needs_graph = not self.detach_norm and torch.is_grad_enabled()
        if needs_graph:
            return (self.base.weight + self.low_rank_update()).norm(p=2, dim=1)
        if not self.training:
            key = self._direction_norm_key()
            if self._cached_norm is None or key != self._cache_key:
                with torch.no_grad():
                    self._cached_norm = (self.base.weight + self.low_rank_update()).norm(p=2, dim=1)
                self._cache_key = key
            return self._cached_norm
        with torch.no_grad():
            return (self.base.weight + self.low_rank_update()).norm(p=2, dim=1)

    def train(self, mode: bool = True) -> "DoRALinear":
        self._cached_norm = None
        self._cache_key = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.magnitude / self.direction_norm()
        frozen = F.linear(x, self.base.weight)
        out = (frozen + self.lora_branch(x)) * gain
        if self.base.bias is not None:
            out = out + self.base.bias
        return out

    def merged_weight(self) -> torch.Tensor:
        """``m[:, None] * V / ||V||_row``: the weight this layer applies (bias unchanged)."""
        direction = self.base.weight + self.low_rank_update()
        return self.magnitude[:, None] * direction / direction.norm(p=2, dim=1, keepdim=True)

    def delta_weight(self) -> torch.Tensor:
        """The ``[out, in]`` update ``merged_weight() - W0`` (magnitude and direction together)."""
        return self.merged_weight() - self.base.weight

    def extra_repr(self) -> str:
        return super().extra_repr() + f", detach_norm={self.detach_norm}"
