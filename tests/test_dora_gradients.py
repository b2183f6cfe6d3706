"""DoRA's gradient formulas (paper eq. 6, 7 and 11, in PyTorch's row axes) against autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from lowrank import DoRALinear
from lowrank.dora_gradients import (
    LayerRecorder,
    direction_gradient,
    lora_factor_gradients,
    magnitude_gradient,
    row_cosines,
    weight_gradient,
)


def _layer(detach_norm: bool) -> DoRALinear:
    torch.manual_seed(0)
    layer = DoRALinear(nn.Linear(12, 7).double(), rank=3, alpha=6, detach_norm=detach_norm)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.3)
        layer.magnitude.mul_(1 + 0.2 * torch.rand_like(layer.magnitude))
    return layer


def _loss(y: torch.Tensor) -> torch.Tensor:
    return torch.tanh(y).square().sum() + y[..., 0].sum()


def test_weight_gradient_is_that_of_a_linear_layer():
    torch.manual_seed(1)
    weight = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    x = torch.randn(2, 3, 4, dtype=torch.double)
    y = F.linear(x, weight)
    output_grad = torch.randn_like(y)
    y.backward(output_grad)
    torch.testing.assert_close(weight_gradient(x, output_grad), weight.grad)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_formulas_match_autograd_of_dora_linear(detach_norm):
    layer = _layer(detach_norm)
    x = torch.randn(2, 5, 12, dtype=torch.double)
    with LayerRecorder(layer) as recorder:
        _loss(layer(x)).backward()
    G = recorder.weight_gradient()
    V = layer._direction().detach()
    m = layer.magnitude.detach()
    torch.testing.assert_close(magnitude_gradient(G, V), layer.magnitude.grad)  # eq. 7, both ways
    grad_V = direction_gradient(G, V, m, detach_norm=detach_norm)
    grad_A, grad_B = lora_factor_gradients(grad_V, layer.lora_A.detach(), layer.lora_B.detach(), layer.scaling)
    torch.testing.assert_close(grad_A, layer.lora_A.grad)
    torch.testing.assert_close(grad_B, layer.lora_B.grad)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_direction_gradient_matches_autograd_on_V(detach_norm):
    layer = _layer(detach_norm)
    x = torch.randn(3, 12, dtype=torch.double)
    V = layer._direction().detach().clone().requires_grad_(True)
    m = layer.magnitude.detach()
    norm = torch.linalg.vector_norm(V, dim=1, keepdim=True)
    W = m[:, None] * V / (norm.detach() if detach_norm else norm)
    y = F.linear(x, W, layer.base.bias)
    output_grad = torch.randn_like(y)
    y.backward(output_grad)
    expected = direction_gradient(weight_gradient(x, output_grad), V.detach(), m, detach_norm=detach_norm)
    torch.testing.assert_close(expected, V.grad)
    cosines = row_cosines(V.grad, V.detach()).abs()
    if detach_norm:
        assert cosines.max() > 1e-3  # eq. 11 keeps the component along V
    else:
        assert cosines.max() < 1e-10  # eq. 6 projects it away


def test_dora_is_weight_normalization_of_w0_plus_ba():
    """torch's weight_norm (dim=0: one g per output row) on V' with g = m: same output, same gradients."""
    layer = _layer(detach_norm=False)
    linear = nn.Linear(12, 7).double()
    with torch.no_grad():
        linear.weight.copy_(layer._direction())
        linear.bias.copy_(layer.base.bias)
    normalized = parametrizations.weight_norm(linear, dim=0)
    with torch.no_grad():
        normalized.parametrizations.weight.original0.copy_(layer.magnitude[:, None])  # g, [out, 1]
    x = torch.randn(4, 12, dtype=torch.double)
    torch.testing.assert_close(normalized(x), layer(x))
    _loss(normalized(x)).backward()
    _loss(layer(x)).backward()
    g = normalized.parametrizations.weight.original0.grad[:, 0]
    v = normalized.parametrizations.weight.original1.grad
    torch.testing.assert_close(g, layer.magnitude.grad)
    V = layer._direction().detach()
    with LayerRecorder(layer) as recorder:
        _loss(layer(x)).backward()
    torch.testing.assert_close(v, direction_gradient(recorder.weight_gradient(), V, layer.magnitude.detach()))  # eq. 6
    layer.zero_grad()
    _loss(layer(x)).backward()
    _, grad_B = lora_factor_gradients(v, layer.lora_A.detach(), layer.lora_B.detach(), layer.scaling)
    torch.testing.assert_close(grad_B, layer.lora_B.grad)


def test_recorder_needs_a_backward():
    layer = _layer(detach_norm=True)
    with LayerRecorder(layer) as recorder:
        layer(torch.randn(2, 12, dtype=torch.double))
    with pytest.raises(RuntimeError, match="backward"):
        recorder.weight_gradient()
