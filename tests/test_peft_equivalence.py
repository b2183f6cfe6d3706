"""Our from-scratch layers against PEFT's LoRA and DoRA, with identical factors."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lowrank import DoRALinear, add_adapters, adapter_layers
from tests.test_layers import randomize

TARGETS = ["q_lin", "v_lin", "lin1"]


def paired_models(model, method: str, rank: int = 4, alpha: float = 8):
    ours = add_adapters(copy.deepcopy(model), TARGETS, method=method, rank=rank, alpha=alpha)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS,
                        use_dora=method == "dora", modules_to_save=["pre_classifier", "classifier"])
    theirs = get_peft_model(copy.deepcopy(model), config)
    peft_modules = dict(theirs.base_model.model.named_modules())
    for index, (name, layer) in enumerate(adapter_layers(ours)):
        randomize(layer, seed=index)
        target = peft_modules[name]
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
            if isinstance(layer, DoRALinear):
                target.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    return ours, theirs


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_forward_and_gradients_match_peft(tiny_model, tiny_batch, method):
    ours, theirs = paired_models(tiny_model, method)
    ours.train(), theirs.train()
    labels = torch.tensor([0, 1, 1])
    out_ours = ours(**tiny_batch, labels=labels)
    out_theirs = theirs(**tiny_batch, labels=labels)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    peft_modules = dict(theirs.base_model.model.named_modules())
    for name, layer in adapter_layers(ours):
        target = peft_modules[name]
        torch.testing.assert_close(layer.lora_A.grad, target.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.grad, target.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
        if isinstance(layer, DoRALinear):
            torch.testing.assert_close(
                layer.magnitude.grad, target.lora_magnitude_vector["default"].weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_weights_match_peft_merge(tiny_model, method):
    ours, theirs = paired_models(tiny_model, method)
    merged = theirs.merge_and_unload()
    merged_modules = dict(merged.named_modules())
    compared = 0
    for name, layer in adapter_layers(ours):
        torch.testing.assert_close(layer.merged_weight(), merged_modules[name].weight, atol=1e-5, rtol=1e-5)
        compared += 1
    assert compared == 2 * len(TARGETS)
