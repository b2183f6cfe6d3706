import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowrank import DoRALinear, LoRALinear
from tests.helpers import randomize

__all__ = ["randomize"]  # test_persistence imports it from here


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
@pytest.mark.parametrize("bias", [True, False])
def test_shapes_init_and_identity_at_start(cls, bias):
    torch.manual_seed(0)
    base = nn.Linear(12, 20, bias=bias)
    layer = cls(base, rank=4, alpha=8)
    assert layer.lora_A.shape == (4, 12) and layer.lora_B.shape == (20, 4)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert layer.scaling == 2.0
    assert not base.weight.requires_grad
    x = torch.randn(5, 3, 12)
    torch.testing.assert_close(layer(x), base(x), atol=1e-6, rtol=0)
    if cls is DoRALinear:
        assert layer.magnitude.shape == (20,)
        torch.testing.assert_close(layer.magnitude, base.weight.norm(dim=1))


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merged_weight_and_forward_match_numpy(cls):
    """Forward, merged weight and merge delta against the paper's formulas written in NumPy (float64)."""
    from tests.numpy_reference import merged

    torch.manual_seed(0)
    layer = randomize(cls(nn.Linear(12, 20), rank=3, alpha=5)).eval()
    w0, a, b, bias = (t.detach().double().numpy() for t in (layer.base.weight, layer.lora_A, layer.lora_B,
                                                             layer.base.bias))
    magnitude = layer.magnitude.detach().double().numpy() if cls is DoRALinear else None
    expected = merged(w0, a, b, 5 / 3, magnitude)  # W0 + (alpha/rank)·B·A, or m·V/||V||_row
    x = torch.randn(4, 12)
    with torch.no_grad():
        np.testing.assert_allclose(layer.merged_weight().double().numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.merged_minus_base().double().numpy(), expected - w0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer(x).double().numpy(), x.double().numpy() @ expected.T + bias,
                                   rtol=1e-5, atol=1e-5)


def test_lora_update_by_hand():
    """A rank-2 case worked out on paper: s = alpha / rank = 4 / 2, B·A written out, W0 = 0."""
    layer = LoRALinear(nn.Linear(3, 3), rank=2, alpha=4)
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.base.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
        layer.lora_A.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    update = torch.tensor([[2.0, 4.0, 0.0], [0.0, 2.0, 2.0], [2.0, 6.0, 2.0]])  # 2 · [[1,2,0],[0,1,1],[1,3,1]]
    with torch.no_grad():
        assert torch.equal(layer.low_rank_update(), update)
        assert torch.equal(layer.merged_minus_base(), update)
        assert torch.equal(layer.merged_weight(), update)
        assert torch.equal(layer.eval()(torch.tensor([1.0, 1.0, 1.0])), torch.tensor([7.0, 4.0, 9.0]))


def test_dora_rows_have_norm_magnitude_and_norm_is_per_output_row():
    layer = randomize(DoRALinear(nn.Linear(7, 7), rank=2, alpha=4))
    merged = layer.merged_weight()
    torch.testing.assert_close(merged.norm(dim=1), layer.magnitude.abs())
    direction = layer.base.weight + layer.low_rank_update()
    torch.testing.assert_close(layer.direction_norm(), direction.norm(dim=1))


def test_dora_detached_norm_gradients_match_the_direct_formula():
    torch.manual_seed(0)
    fast = randomize(DoRALinear(nn.Linear(10, 8), rank=2, alpha=4)).train()
    direct = copy.deepcopy(fast)
    x = torch.randn(5, 10)
    fast(x).square().sum().backward()
    direction = direct.base.weight + direct.low_rank_update()
    weight = direct.magnitude[:, None] * direction / direction.norm(dim=1, keepdim=True).detach()
    F.linear(x, weight, direct.base.bias).square().sum().backward()
    for name in ("lora_A", "lora_B", "magnitude"):
        torch.testing.assert_close(getattr(fast, name).grad, getattr(direct, name).grad, atol=1e-5, rtol=1e-4)


def test_dora_without_detach_backpropagates_through_the_norm():
    torch.manual_seed(0)
    full = randomize(DoRALinear(nn.Linear(10, 8), rank=2, alpha=4, detach_norm=False)).train()
    direct = copy.deepcopy(full)
    x = torch.randn(5, 10)
    full(x).square().sum().backward()
    F.linear(x, direct.merged_weight(), direct.base.bias).square().sum().backward()
    torch.testing.assert_close(full.lora_A.grad, direct.lora_A.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("change", ["scaling reassigned", "write through .data", "parameter replaced in place"])
def test_dora_eval_forward_follows_every_change(change):
    layer = randomize(DoRALinear(nn.Linear(6, 5), rank=2, alpha=2))
    layer.lora_B = nn.Parameter(layer.lora_B.detach().clone())  # version 0, for the replacement below
    layer.eval()
    x = torch.randn(3, 6)
    with torch.no_grad():
        layer(x)
        if change == "scaling reassigned":
            layer.scaling = 3.0
        elif change == "write through .data":
            layer.lora_B.data.add_(1.0)  # .data writes change no version counter
        else:  # a new Parameter at the old one's address with the same version, as when freed memory is reused
            reused = layer.lora_B.data
            reused.data.copy_(torch.randn(reused.shape))
            layer.lora_B = nn.Parameter(reused)
            assert layer.lora_B.data_ptr() == reused.data_ptr() and layer.lora_B._version == 0
        expected = F.linear(x, layer.merged_weight(), layer.base.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_dropout_acts_on_the_lora_branch_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 8), rank=2, alpha=2, dropout=0.5).train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: the branch adds nothing
    randomize(layer)
    assert not torch.allclose(layer(x), layer(x))  # stochastic while training
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rank": 0}, ValueError, "rank must be a positive integer"),
        ({"rank": -2}, ValueError, "rank must be a positive integer"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"alpha": 0}, ValueError, "alpha must be a positive"),
        ({"alpha": -1.0}, ValueError, "alpha must be a positive"),
        ({"alpha": float("nan")}, ValueError, "alpha must be a positive"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_bad_arguments_raise_clear_errors(cls, kwargs, error, message):
    arguments = {"rank": 2, "alpha": 4.0, "dropout": 0.0, **kwargs}
    with pytest.raises(error, match=message):
        cls(nn.Linear(8, 8), **arguments)


def test_base_must_be_linear():
    with pytest.raises(TypeError, match="must be a torch.nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), rank=1, alpha=1)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dora_memory_lean_backward_matches_autograd_of_the_official_form(dropout):
    """With dropout, DoRA is W0 x + b + (g - 1) W0 drop(x) + g s B A drop(x) (official code and PEFT)."""
    torch.manual_seed(0)
    layer = randomize(DoRALinear(nn.Linear(10, 8), rank=3, alpha=4, dropout=dropout)).train()
    x = torch.randn(2, 5, 10, requires_grad=True)
    torch.manual_seed(1)
    layer(x).sin().sum().backward()
    lean = [t.grad.clone() for t in (x, layer.lora_A, layer.lora_B, layer.magnitude)]
    for t in (x, layer.lora_A, layer.lora_B, layer.magnitude):
        t.grad = None
    torch.manual_seed(1)
    dropped = layer.lora_dropout(x)
    gain = layer.magnitude / (layer.base.weight + layer.low_rank_update()).norm(dim=1).detach()
    official = (layer.base(x) + (gain - 1) * F.linear(dropped, layer.base.weight)
                + gain * layer.scaling * F.linear(F.linear(dropped, layer.lora_A), layer.lora_B))
    official.sin().sum().backward()
    for got, expected in zip(lean, (x.grad, layer.lora_A.grad, layer.lora_B.grad, layer.magnitude.grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merge_writes_into_the_base_weight_and_lora_unmerges(cls):
    torch.manual_seed(0)
    layer = randomize(cls(nn.Linear(12, 20), rank=3, alpha=5)).eval()
    original = layer.base.weight.detach().clone()
    x = torch.randn(4, 12)
    with torch.no_grad():
        expected, merged_weight = layer(x), layer.merged_weight()
        base = layer.merge()
        assert base is layer.base and layer.merged
        torch.testing.assert_close(base.weight, merged_weight)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.train()(x)
    if cls is LoRALinear:
        layer.unmerge()
        torch.testing.assert_close(layer.base.weight, original, atol=1e-6, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(layer.eval()(x), expected, atol=1e-5, rtol=1e-5)
    else:
        with pytest.raises(NotImplementedError, match="not exactly invertible"):
            layer.unmerge()


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merge_refuses_nan_and_inf_and_writes_nothing(cls):
    layer = randomize(cls(nn.Linear(6, 4), rank=2, alpha=2))
    original = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B[1, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base.weight, original)


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_merge_and_unmerge_on_a_bf16_base(cls):
    """A half-precision base: adapters stay fp32, merging rounds once into bf16, unmerging (LoRA) returns W0
    up to that rounding."""
    torch.manual_seed(0)
    base = nn.Linear(32, 24).to(torch.bfloat16)
    w0 = base.weight.detach().clone()
    layer = randomize(cls(base, rank=4, alpha=8)).eval()
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        exact = torch.as_tensor(layer.merged_weight().double())  # what merging should write, before rounding
        unmerged_out = layer(x).float()
        layer.merge()
        assert layer.base.weight.dtype == torch.bfloat16
        torch.testing.assert_close(layer.base.weight.double(), exact, rtol=2**-8, atol=1e-6)  # one bf16 rounding
        torch.testing.assert_close(layer(x).float(), unmerged_out, rtol=0.05, atol=0.05)
        if cls is LoRALinear:
            layer.unmerge()
            # three bf16 roundings (the merged weight, the update, the difference), each at most 2^-8 relative
            bound = 2**-8 * (2 * exact.abs() + (exact - w0.double()).abs()) + 1e-9
            assert ((layer.base.weight.double() - w0.double()).abs() <= bound).all()
