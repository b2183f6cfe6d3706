"""Our from-scratch layers against PEFT's LoRA and DoRA, with identical factors (and dropout masks)."""

import pytest
import torch

from lowrank import DoRALinear
from tests.helpers import peft_pair

TARGETS = ["q_lin", "v_lin", "lin1"]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_forward_and_gradients_match_peft(tiny_model, tiny_batch, method, dropout):
    """Every hidden state, and the gradients of a loss on the last one (entries of order 1, unlike the logits)."""
    ours, theirs, layers = peft_pair(tiny_model, method, TARGETS, dropout=dropout)
    ours.train(), theirs.train()
    out_ours = ours(**tiny_batch, output_hidden_states=True)
    out_theirs = theirs(**tiny_batch, output_hidden_states=True)
    for mine, peft in zip(out_ours.hidden_states, out_theirs.hidden_states, strict=True):
        torch.testing.assert_close(mine, peft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-6, rtol=1e-5)
    if dropout:  # the masks acted: training differs from eval
        with torch.no_grad():
            eval_hidden = ours.eval()(**tiny_batch, output_hidden_states=True).hidden_states[-1]
            assert (out_ours.hidden_states[-1] - eval_hidden).abs().max() > 1e-2
    weights = torch.randn(out_ours.hidden_states[-1].shape, generator=torch.Generator().manual_seed(0))
    (out_ours.hidden_states[-1] * weights).sum().backward()
    (out_theirs.hidden_states[-1] * weights).sum().backward()
    for layer, target in layers:
        torch.testing.assert_close(layer.lora_A.grad, target.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.grad, target.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
        if isinstance(layer, DoRALinear):
            torch.testing.assert_close(
                layer.magnitude.grad, target.lora_magnitude_vector["default"].weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_weights_match_peft_merge(tiny_model, method):
    ours, theirs, layers = peft_pair(tiny_model, method, TARGETS)
    merged = dict(theirs.merge_and_unload().named_modules())
    names = {id(layer): name for name, layer in ours.named_modules()}
    for layer, _ in layers:
        torch.testing.assert_close(layer.merged_weight(), merged[names[id(layer)]].weight, atol=1e-5, rtol=1e-5)
    assert len(layers) == 2 * len(TARGETS)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_names_say_which_update(tiny_model, method):
    """``low_rank_update`` is PEFT's ``get_delta_weight`` (s·B·A); ``merged_minus_base`` is what PEFT's merge
    adds to W0 (for LoRA the same s·B·A, for DoRA also the rows' rescaling)."""
    _, theirs, layers = peft_pair(tiny_model, method, TARGETS)
    for layer, target in layers:
        with torch.no_grad():
            torch.testing.assert_close(layer.low_rank_update(), target.get_delta_weight("default"))
            w0 = target.get_base_layer().weight.detach().clone()
            target.merge()
            merged_by_peft = target.get_base_layer().weight.detach().clone()
            target.unmerge()
            torch.testing.assert_close(layer.merged_minus_base(), merged_by_peft - w0, atol=1e-6, rtol=1e-5)

@pytest.mark.parametrize("method", ["lora", "dora"])
def test_forward_and_gradients_match_peft_under_bf16_autocast(tiny_model, tiny_batch, method):
    """Under ``torch.autocast`` (bf16 on the CPU, as the course trains where bf16 is fast): same outputs and
    gradients as PEFT up to bf16 rounding (8 bits of mantissa)."""
    ours, theirs, layers = peft_pair(tiny_model, method, TARGETS)
    ours.train(), theirs.train()
    outputs = []
    for model in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model(**tiny_batch, output_hidden_states=True).hidden_states[-1]
        weights = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
        (hidden.float() * weights).sum().backward()
        outputs.append(hidden.float())
    torch.testing.assert_close(outputs[0], outputs[1], atol=0.05, rtol=0.02)
    for layer, target in layers:
        assert layer.lora_A.dtype == torch.float32 and layer.lora_B.grad.dtype == torch.float32
        for mine, peft in ((layer.lora_A.grad, target.lora_A["default"].weight.grad),
                           (layer.lora_B.grad, target.lora_B["default"].weight.grad)):
            scale = peft.abs().max()
            torch.testing.assert_close(mine / scale, peft / scale, atol=0.03, rtol=0)
