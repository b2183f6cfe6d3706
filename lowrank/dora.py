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

which equals ``F.linear(x, m[:, None] * V / ||V||, bias)``. In training, a custom autograd
function computes this product and, instead of keeping the ``[batch, tokens, out]`` tensor
``x @ W0.T + scaling * B(A(x))`` for the magnitude's gradient, recomputes it in backward from
the input that autograd keeps anyway: DoRA then holds about the memory of LoRA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowrank.lora import LoRALinear


class _DoRAProduct(torch.autograd.Function):
    """``(x @ W.T + s * B(A(x_lora))) * m / norm`` with memory-lean backward (norm is a constant)."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, lora_A, lora_B, magnitude, norm, scaling):  # type: ignore[override]
        hidden = F.linear(x_lora, lora_A)
        pre = torch.add(F.linear(x, weight), F.linear(hidden, lora_B), alpha=scaling)
        ctx.save_for_backward(x, x_lora, weight, lora_A, lora_B, magnitude, norm, hidden)
        ctx.scaling = scaling
        return pre * (magnitude / norm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, x_lora, weight, lora_A, lora_B, magnitude, norm, hidden = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_x_lora, _, need_A, need_B, need_m, _, _ = ctx.needs_input_grad
        grad_scaled = grad_out * (magnitude / norm)
        flat_grad = grad_scaled.reshape(-1, grad_scaled.shape[-1])
        grad_x = grad_x_lora = grad_A = grad_B = grad_m = None
        if need_m:  # recompute the pre-scaling output rather than keeping it from the forward
            pre = torch.add(F.linear(x, weight), F.linear(hidden, lora_B), alpha=s)
            grad_m = (grad_out * pre).reshape(-1, pre.shape[-1]).sum(0) / norm
        if need_B:
            grad_B = flat_grad.T @ hidden.reshape(-1, hidden.shape[-1]) * s
        if need_A or need_x_lora:
            grad_hidden = F.linear(grad_scaled, lora_B.T) * s
            if need_A:
                grad_A = grad_hidden.reshape(-1, grad_hidden.shape[-1]).T @ x_lora.reshape(-1, x_lora.shape[-1])
            if need_x_lora:
                grad_x_lora = F.linear(grad_hidden, lora_A.T)
        if need_x:
            grad_x = F.linear(grad_scaled, weight.T)
        return grad_x, grad_x_lora, None, grad_A, grad_B, grad_m, None, None


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
        if not self.detach_norm and torch.is_grad_enabled():
            return self._norm_of_direction()
        if not self.training:
            key = self._direction_norm_key()
            if self._cached_norm is None or key != self._cache_key:
                with torch.no_grad():
                    self._cached_norm = self._norm_of_direction()
                self._cache_key = key
            return self._cached_norm
        with torch.no_grad():
            return self._norm_of_direction()

    def _norm_of_direction(self) -> torch.Tensor:
        return (self.base.weight + self.low_rank_update()).norm(p=2, dim=1)

    def train(self, mode: bool = True) -> "DoRALinear":
        self._cached_norm = None
        self._cache_key = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.direction_norm()
        if self.detach_norm and torch.is_grad_enabled():
            out = _DoRAProduct.apply(x, self.lora_dropout(x), self.base.weight, self.lora_A, self.lora_B,
                                     self.magnitude, norm, self.scaling)
        else:
            out = (F.linear(x, self.base.weight) + self.lora_branch(x)) * (self.magnitude / norm)
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
