"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024).

Taught in notebook 03: section 1 (which norm), section 2 (the layer, its efficient forward, its dropout),
section 3 (what the detached norm saves; A1 measures the recompute), section 4 (the same numbers as PEFT),
section 6 (merging).

Each output feature's weight row is split into a magnitude and a direction,

    W' = m * V / ||V||_row,   V = W0 + (alpha / rank) * B @ A,   m initialised to ||W0||_row.

The paper's "columns" are output features, i.e. *rows* of ``nn.Linear.weight``
(``[out, in]``), so the norm is over ``dim=1`` and ``m`` has shape ``[out_features]``.
Following the paper's section 4.3, ``||V||`` is treated as a constant in backprop
(detached), which saves the memory of its graph with a small change in accuracy (paper Table 7).

Forward without materialising a weight that needs a gradient: with
``g = m / ||V||`` (norm detached),

    y = g * (x @ W0.T + scaling * B(A(x))) + bias,

which equals ``F.linear(x, m[:, None] * V / ||V||, bias)``. With dropout ``p > 0`` in training,
the official DoRA code and PEFT drop out only the input of the *change* to ``W0 x``:

    y = W0 x + bias + (g - 1) * W0 drop(x) + g * scaling * B(A(drop(x)))
      = g * (W0 drop(x) + scaling * B(A(drop(x)))) + W0 (x - drop(x)) + bias,

which this layer computes in the second form. ``drop`` is ``nn.Dropout(dropout)``, so it acts only in
training mode and only for ``dropout > 0``; then ``z = drop(x)`` feeds both ``W0`` and the LoRA branch
inside the gain, and ``W0 (x - z)`` is added (one extra matmul). Otherwise ``z = x`` and nothing is added.

Which code computes ``g * (W0 z + s B(A(z))) + bias`` depends on autograd, not on the module's mode:

* ``detach_norm=True``, autograd recording (``torch.is_grad_enabled()``) and the base frozen, in training
  *or* eval mode:
  a custom autograd function that, instead of keeping the ``[batch, tokens, out]`` product for the
  magnitude's gradient, recomputes it in backward from ``z``, which it keeps anyway: DoRA then holds
  about the memory of LoRA.
* under ``torch.no_grad()`` / ``torch.inference_mode()``, with ``detach_norm=False``, or with a base layer
  someone unfroze: ordinary torch operations, same value; with ``detach_norm=False`` the norm keeps its
  graph (more memory); an unfrozen base gets its gradient.

The norm is recomputed at every forward, also in eval mode: a cache would have to notice every
change of ``W0``, ``A``, ``B`` and ``scaling`` (writes through ``.data`` change no version counter),
and checking ``W0`` costs what recomputing does. Merge (:meth:`DoRALinear.merge`) for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lowrank.lora import LoRALinear, compute_dtype


def _product(z: torch.Tensor, weight: torch.Tensor, hidden: torch.Tensor, lora_B: torch.Tensor,
             scaling: float) -> torch.Tensor:
    """``z @ W.T + scaling * hidden @ B.T``, the thin matmul accumulated into the wide one's result (no extra pass)."""
    product = F.linear(z, weight)
    product.view(-1, product.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), lora_B.T, alpha=scaling)
    return product


def _gain_and_bias(product: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``product * gain + bias`` in one pass."""
    return product * gain if bias is None else torch.addcmul(bias, product, gain)


class _DoRAProduct(torch.autograd.Function):
    """``gain * (z @ W.T + s * B(A(z))) + bias`` with a memory-lean backward; every tensor in one dtype.

    ``gain = m / ||V||`` with the norm detached, so the frozen ``W`` (and bias) get no gradient and
    ``gain``'s is the per-feature sum of ``grad * (z @ W.T + s * B(A(z)))``, recomputed here.
    """

    @staticmethod
    def forward(ctx, z, weight, lora_A, lora_B, gain, scaling, bias):  # type: ignore[override]
        hidden = F.linear(z, lora_A)
        ctx.save_for_backward(z, weight, lora_A, lora_B, gain, hidden)
        ctx.scaling = scaling
        return _gain_and_bias(_product(z, weight, hidden, lora_B, scaling), gain, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        z, weight, lora_A, lora_B, gain, hidden = ctx.saved_tensors
        s = ctx.scaling
        need_z, _, need_A, need_B, need_gain, _, _ = ctx.needs_input_grad
        grad_product = grad_out * gain
        flat_grad = grad_product.reshape(-1, grad_product.shape[-1])
        grad_z = grad_A = grad_B = grad_gain = None
        if need_gain:  # recompute the product rather than keeping it from the forward
            product = _product(z, weight, hidden, lora_B, s)
            grad_gain = product.mul_(grad_out).reshape(-1, product.shape[-1]).sum(0)
        if need_B:
            grad_B = flat_grad.T @ hidden.reshape(-1, hidden.shape[-1]) * s
        if need_A or need_z:
            grad_hidden = F.linear(grad_product, lora_B.T) * s
            if need_A:
                grad_A = grad_hidden.reshape(-1, grad_hidden.shape[-1]).T @ z.reshape(-1, z.shape[-1])
            if need_z:
                grad_z = F.linear(grad_product, weight.T)  # W's part, plus the branch's accumulated in the matmul:
                grad_z.view(-1, grad_z.shape[-1]).addmm_(grad_hidden.reshape(-1, grad_hidden.shape[-1]), lora_A)
        return grad_z, None, grad_A, grad_B, grad_gain, None, None


class DoRALinear(LoRALinear):
    """A frozen linear layer adapted by DoRA: a trainable magnitude and a LoRA direction update.

    Args:
        base, rank, alpha, dropout: as for :class:`~lowrank.lora.LoRALinear`.
        detach_norm: treat ``||V||_row`` as a constant in backprop (paper section 4.3), and use the
            memory-lean custom autograd function while autograd records (module docstring).
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
            self.magnitude = nn.Parameter(torch.linalg.vector_norm(base.weight.to(self.lora_A.dtype), dim=1))

    def _direction(self) -> torch.Tensor:
        """``V = W0 + scaling * B @ A``, ``[out, in]``, in the adapters' dtype, autocast off (norms are not rounded)."""
        if self.merged:
            raise RuntimeError("this DoRALinear is merged: its base weight is m * V / ||V||, W0 is gone")
        with torch.autocast(self.lora_A.device.type, enabled=False):
            return torch.addmm(self.base.weight.to(self.lora_A.dtype), self.lora_B, self.lora_A, alpha=self.scaling)

    def direction_norm(self) -> torch.Tensor:
        """``||W0 + scaling * B @ A||`` per output row, shape ``[out_features]``.

        Detached unless ``detach_norm`` is False and autograd is recording.
        """
        if not self.detach_norm and torch.is_grad_enabled():
            return torch.linalg.vector_norm(self._direction(), dim=1)
        with torch.no_grad():
            return torch.linalg.vector_norm(self._direction(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._merged_forward(x)
        dtype = compute_dtype(x, self.base)
        dropped = self.lora_dropout(x)
        gain = (self.magnitude / self.direction_norm()).to(dtype)
        z, weight, lora_A, lora_B = (t.to(dtype) for t in (dropped, self.base.weight, self.lora_A, self.lora_B))
        bias = None if self.base.bias is None else self.base.bias.to(dtype)
        if self.detach_norm and torch.is_grad_enabled() and not self._base_trains():
            out = _DoRAProduct.apply(z, weight, lora_A, lora_B, gain, self.scaling, bias)
        else:
            out = _gain_and_bias(F.linear(z, weight) + self._branch(z), gain, bias)
        if dropped is not x:  # dropout acted: W0 sees the whole input (module docstring)
            out = out + F.linear((x - dropped).to(dtype), weight)
        return out

    def _base_trains(self) -> bool:
        """Whether someone unfroze the base layer: the memory-lean function returns no gradient for it, so
        such a layer takes the ordinary operations, which do (a parameter marked trainable must train)."""
        return any(p.requires_grad for p in self.base.parameters())

    def _weight(self) -> torch.Tensor:
        """``m[:, None] * V / ||V||_row`` from ``W0`` (so: unmerged layers only)."""
        direction = self._direction()
        return self.magnitude[:, None] * direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True)

    def merged_weight(self) -> torch.Tensor:
        """``m[:, None] * V / ||V||_row``: the weight this layer applies (bias unchanged)."""
        return self.base.weight if self.merged else self._weight()

    def merged_minus_base(self) -> torch.Tensor:
        """The ``[out, in]`` change ``merged_weight() - W0``: magnitude and direction together.

        Not :meth:`low_rank_update` (``s * B @ A``, PEFT's ``get_delta_weight``), which changes only ``V``.
        """
        return self._weight() - self.base.weight

    def unmerge(self) -> None:
        """Not offered: recovering ``W0`` from ``m * V / ||V||`` divides by ``m / ||V||``, which rounds (and
        fails where ``m`` is 0). Keep a copy of the base weights, or reload them, to undo a DoRA merge."""
        raise NotImplementedError("DoRA's merge is not exactly invertible; reload the base weights to undo it")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", detach_norm={self.detach_norm}"
