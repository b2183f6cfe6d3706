"""Property tests over layer shapes, ranks, alpha, dropout and bias."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowrank import DoRALinear, LoRALinear

layer_settings = st.fixed_dictionaries({
    "in_features": st.integers(1, 24),
    "out_features": st.integers(1, 24),
    "rank": st.integers(1, 8),
    "alpha": st.floats(0.1, 64, allow_nan=False),
    "dropout": st.sampled_from([0.0, 0.1, 0.5]),
    "bias": st.booleans(),
    "dora": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def build(spec):
    torch.manual_seed(spec["seed"])
    cls = DoRALinear if spec["dora"] else LoRALinear
    base = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    return cls(base, rank=spec["rank"], alpha=spec["alpha"], dropout=spec["dropout"])


@settings(max_examples=60, deadline=None)
@given(layer_settings)
def test_adapters_start_equal_to_the_base(spec):
    layer = build(spec).eval()
    x = torch.randn(3, spec["in_features"])
    torch.testing.assert_close(layer(x), layer.base(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(layer_settings)
def test_merge_equals_unmerged_forward_and_dora_rows_have_norm_magnitude(spec):
    layer = build(spec).eval()
    with torch.no_grad():
        layer.lora_B.normal_()
        if spec["dora"]:
            layer.magnitude.mul_(torch.empty_like(layer.magnitude).uniform_(-2, 2))
    x = torch.randn(3, spec["in_features"])
    with torch.no_grad():
        expected = F.linear(x, layer.merged_weight(), layer.base.bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-4, rtol=1e-4)
        if spec["dora"]:
            torch.testing.assert_close(layer.merged_weight().norm(dim=1), layer.magnitude.abs(), atol=1e-4, rtol=1e-4)
