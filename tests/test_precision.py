"""Half precision: adapters stay fp32 on a half-precision base, and both layers train under autocast."""

import copy

import pytest
import torch
from torch import nn

from lowrank import DoRALinear, LoRALinear, add_adapters, adapter_layers
from tests.helpers import randomize

BF16_TOLERANCE = 3e-2  # relative to each gradient's norm; bf16 keeps 8 bits of mantissa (2**-8 = 0.4 %)


def adapter_parameters(layer):
    return [p for name, p in layer.named_parameters() if not name.startswith("base.")]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_adapters_stay_fp32_on_a_half_precision_base(cls, dtype):
    layer = cls(nn.Linear(8, 6).to(dtype), rank=2, alpha=4)
    assert layer.base.weight.dtype == dtype
    assert {p.dtype for p in adapter_parameters(layer)} == {torch.float32}


@pytest.mark.parametrize("cls", [LoRALinear, DoRALinear])
def test_bf16_base_trains_its_fp32_adapters_and_matches_fp32(cls):
    torch.manual_seed(0)
    full = randomize(cls(nn.Linear(32, 24), rank=4, alpha=8)).train()
    half = copy.deepcopy(full)
    half.base.to(torch.bfloat16)
    x = torch.randn(5, 32)
    y_full, y_half = full(x), half(x.to(torch.bfloat16))
    assert y_half.dtype == torch.bfloat16
    torch.testing.assert_close(y_half.float(), y_full, atol=5e-2, rtol=2e-2)
    y_full.square().sum().backward()
    y_half.float().square().sum().backward()
    for p_full, p_half in zip(adapter_parameters(full), adapter_parameters(half), strict=True):
        assert p_half.dtype == p_half.grad.dtype == torch.float32
        assert (p_half.grad - p_full.grad).norm() <= BF16_TOLERANCE * p_full.grad.norm()


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_bf16_autocast_training_step_on_cpu(tiny_model, tiny_batch, method):
    model = add_adapters(tiny_model, ["q_lin", "v_lin", "lin1"], method=method, rank=4, alpha=8).train()
    for index, (_, layer) in enumerate(adapter_layers(model)):
        randomize(layer, seed=index)
    labels = torch.tensor([0, 1, 1])
    reference = copy.deepcopy(model)
    reference(**tiny_batch, labels=labels).loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**tiny_batch, labels=labels).loss
    loss.backward()
    expected = dict(reference.named_parameters())
    checked = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == parameter.grad.dtype == torch.float32, name
            error = (parameter.grad - expected[name].grad).norm()
            assert error <= BF16_TOLERANCE * expected[name].grad.norm(), (name, error)
            checked += 1
    assert checked == 6 * (3 if method == "dora" else 2) + 4  # adapters, plus the head's weights and biases
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 and not torch.equal(p, q) for p, q in zip(after, before))
