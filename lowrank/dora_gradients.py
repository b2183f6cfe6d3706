"""DoRA's gradients in closed form (paper section 4.2, eq. 6-7, and the detached form of section 4.3, eq. 11).

The paper (Liu et al., 2024) writes ``W' = m V'/||V'||_c`` with ``V' = V + ΔV`` and gives

    eq. 6:  ∇_V' L = m / ||V'||_c · (I − V'V'ᵀ / ||V'||_c²) ∇_W' L
    eq. 7:  ∇_m L  = ∇_W' L · V' / ||V'||_c
    eq. 11: ∇_V' L = m / C · ∇_W' L,  C = ||V'||_c   (the norm treated as a constant)

"per column" of its ``W``; in PyTorch's axes (``nn.Linear.weight`` is ``[out, in]``) a paper column
is one output feature, i.e. one **row**. So, row ``n`` by row ``n``, with ``g_n`` the row ``n`` of
``G = ∇_W' L`` and ``v_n`` the row ``n`` of ``V'``:

    ∇_m L[n]   = g_n · v_n / ||v_n||
    ∇_V' L[n]  = m[n] / ||v_n|| · (g_n − (g_n · v̂_n) v̂_n),   v̂_n = v_n / ||v_n||   (eq. 6)
    ∇_V' L[n]  = m[n] / ||v_n|| · g_n                                                (eq. 11, detached)

The projection removes from each gradient row its component along that row of ``V'``, so
``∇_V' L[n] ⟂ v_n``. With ``V' = W0 + s·B A`` (``s = alpha / r``) the factors get, by the chain rule,
``∇_B L = s ∇_V' L Aᵀ`` and ``∇_A L = s Bᵀ ∇_V' L``. For ``y = x W'ᵀ + b`` the weight gradient is
``G = Σ_tokens (∂L/∂y)ᵀ x``, which :class:`LayerRecorder` collects from a real forward and backward.

This is weight normalization (Salimans & Kingma, 2016: ``w = g v/||v||``, one ``g`` per output
row, as ``torch.nn.utils.parametrizations.weight_norm(linear, dim=0)``) applied to ``V' = W0 + s·B A``,
with ``g = m`` initialised to ``||W0||`` per row and ``v`` moved only through the low-rank ``B A``.
"""

from __future__ import annotations

import torch
from torch import nn


def weight_gradient(inputs: torch.Tensor, output_grad: torch.Tensor) -> torch.Tensor:
    """``∇_W L = Σ (∂L/∂y)ᵀ x`` over every leading (batch, token) index, ``[out, in]``, for ``y = x Wᵀ + b``."""
    return output_grad.reshape(-1, output_grad.shape[-1]).T @ inputs.reshape(-1, inputs.shape[-1])


def magnitude_gradient(weight_grad: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Paper eq. 7 in PyTorch's axes: ``∇_m L[n] = G[n] · V[n] / ||V[n]||``, shape ``[out]``.

    Args:
        weight_grad: ``G = ∇_W' L``, ``[out, in]``.
        direction: ``V' = W0 + s·B A``, ``[out, in]`` (not normalised).
    """
    return (weight_grad * direction).sum(dim=1) / torch.linalg.vector_norm(direction, dim=1)


def direction_gradient(weight_grad: torch.Tensor, direction: torch.Tensor, magnitude: torch.Tensor,
                       detach_norm: bool = False) -> torch.Tensor:
    """``∇_V' L``, ``[out, in]``: paper eq. 6 (``detach_norm=False``) or eq. 11 (norm detached), per row.

    Args:
        weight_grad: ``G = ∇_W' L``, ``[out, in]``.
        direction: ``V'``, ``[out, in]``.
        magnitude: ``m``, ``[out]``.
        detach_norm: ``True`` gives eq. 11, ``m/||V'|| · G`` (no projection): the gradient DoRA
            trains with when the norm is treated as a constant (paper section 4.3).
    """
    norm = torch.linalg.vector_norm(direction, dim=1, keepdim=True)
    scaled = magnitude[:, None] / norm * weight_grad
    if detach_norm:
        return scaled
    unit = direction / norm
    return scaled - (scaled * unit).sum(dim=1, keepdim=True) * unit  # (I − v̂ v̂ᵀ) on every row


def lora_factor_gradients(direction_grad: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                          scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇_A L, ∇_B L)`` from ``∇_V' L`` through ``V' = W0 + scaling · B A``: ``s Bᵀ ∇_V'`` and ``s ∇_V' Aᵀ``."""
    return scaling * lora_B.T @ direction_grad, scaling * direction_grad @ lora_A.T


def row_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between row ``n`` of ``a`` and row ``n`` of ``b``, for every ``n``: shape ``[rows]``."""
    return (a * b).sum(dim=1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1))


class LayerRecorder:
    """While active, keeps the input ``x`` and the output gradient ``∂L/∂y`` of every call of ``module``.

    Use it around one forward and backward, then :meth:`weight_gradient` gives ``∇_W' L`` of the
    weight the module applied (for a DoRA layer: ``W' = m V'/||V'||``)::

        with LayerRecorder(layer) as recorder:
            model(**batch).loss.backward()
        G = recorder.weight_gradient()
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inputs: list[torch.Tensor] = []
        self.output_grads: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.inputs.append(args[0].detach())
        if output.requires_grad:
            output.register_hook(lambda grad: self.output_grads.append(grad.detach()))

    def __enter__(self) -> LayerRecorder:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def weight_gradient(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``Σ (∂L/∂y)ᵀ x`` over every recorded call (backward runs the calls in reverse order)."""
        if not self.inputs or len(self.inputs) != len(self.output_grads):
            raise RuntimeError(f"recorded {len(self.inputs)} forward and {len(self.output_grads)} backward calls: "
                               "run one forward and one backward inside the `with` block")
        return sum(weight_gradient(x.to(dtype or x.dtype), g.to(dtype or g.dtype))
                   for x, g in zip(self.inputs, reversed(self.output_grads)))
