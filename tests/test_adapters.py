import pytest
import torch

from lowrank import (
    DoRALinear,
    LoRALinear,
    add_adapters,
    adapter_layers,
    count_parameters,
    merge_adapters,
    targets_from_toggles,
)
from tests.test_layers import randomize


def test_toggles_map_to_distilbert_names():
    assert targets_from_toggles() == ["q_lin", "v_lin"]
    assert targets_from_toggles(query=False, value=False, mlp=True, head=True) == [
        "lin1", "lin2", "pre_classifier", "classifier"]


@pytest.mark.parametrize("method, cls", [("lora", LoRALinear), ("dora", DoRALinear)])
def test_add_adapters_replaces_targets_and_freezes_the_rest(tiny_model, method, cls):
    add_adapters(tiny_model, ["q_lin", "v_lin"], method=method, rank=2, alpha=4)
    names = [name for name, _ in adapter_layers(tiny_model)]
    assert names == [f"distilbert.transformer.layer.{i}.attention.{m}" for i in range(2) for m in ("q_lin", "v_lin")]
    assert all(isinstance(layer, cls) for _, layer in adapter_layers(tiny_model))
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert all(("lora_" in n or "magnitude" in n or n.startswith(("pre_classifier", "classifier"))) for n in trainable)
    assert "classifier.weight" in trainable and "pre_classifier.weight" in trainable
    per_layer = 2 * (2 * 16) + (16 if method == "dora" else 0)
    head = 16 * 16 + 16 + 16 * 2 + 2
    assert count_parameters(tiny_model).trainable == 4 * per_layer + head


def test_adapters_start_as_identity_and_merge_exactly(tiny_model, tiny_batch):
    before = tiny_model(**tiny_batch).logits
    add_adapters(tiny_model, targets_from_toggles(key=True, projection=True, mlp=True), method="dora")
    torch.testing.assert_close(tiny_model(**tiny_batch).logits, before, atol=1e-5, rtol=0)
    for _, layer in adapter_layers(tiny_model):
        randomize(layer)
    adapted = tiny_model(**tiny_batch).logits
    merge_adapters(tiny_model)
    assert not list(adapter_layers(tiny_model))
    torch.testing.assert_close(tiny_model(**tiny_batch).logits, adapted, atol=1e-5, rtol=1e-5)


def test_target_that_matches_nothing(tiny_model):
    with pytest.raises(ValueError, match=r"target 'query' matches no module.*q_lin"):
        add_adapters(tiny_model, ["query"])


def test_target_that_is_not_linear(tiny_model):
    with pytest.raises(TypeError, match=r"'ffn'.*FFN, not an nn.Linear"):
        add_adapters(tiny_model, ["ffn"])


def test_bad_method_targets_and_hyperparameters(tiny_model):
    with pytest.raises(ValueError, match="method must be one of"):
        add_adapters(tiny_model, ["q_lin"], method="qlora")
    with pytest.raises(TypeError, match="not a string"):
        add_adapters(tiny_model, "q_lin")
    with pytest.raises(ValueError, match="targets is empty"):
        add_adapters(tiny_model, [])
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        add_adapters(tiny_model, ["q_lin"], rank=0)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        add_adapters(tiny_model, ["q_lin"], alpha=-1)
    with pytest.raises(ValueError, match="dropout"):
        add_adapters(tiny_model, ["q_lin"], dropout=1.5)


def test_adapting_twice_is_refused(tiny_model):
    add_adapters(tiny_model, ["q_lin"])
    with pytest.raises(TypeError, match="already has an adapter"):
        add_adapters(tiny_model, ["q_lin"])
