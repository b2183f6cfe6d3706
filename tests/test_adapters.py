import copy

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from lowrank import (
    DoRALinear,
    LoRALinear,
    add_adapters,
    adapter_layers,
    count_parameters,
    freeze_all_but_head,
    merge_adapters,
    targets_from_toggles,
)
from tests.helpers import randomize


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


def test_adapters_added_in_two_calls_all_train(tiny_model):
    at_once = add_adapters(copy.deepcopy(tiny_model), ["q_lin", "v_lin"], rank=2, alpha=4)
    add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)
    add_adapters(tiny_model, ["v_lin"], method="dora", rank=2, alpha=4)
    for name, layer in adapter_layers(tiny_model):
        assert layer.lora_A.requires_grad and layer.lora_B.requires_grad, name
        assert not any(p.requires_grad for p in layer.base.parameters()), name
    assert count_parameters(tiny_model).trainable == count_parameters(at_once).trainable + 2 * 16  # + magnitudes


def tiny_gpt2() -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=99)
    return GPT2ForSequenceClassification(config).eval()


def tiny_llama() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)
    return LlamaForSequenceClassification(config).eval()


def test_the_head_is_found_by_what_the_model_is(tiny_model):
    trainable = lambda model: sorted(n for n, p in model.named_parameters() if p.requires_grad)  # noqa: E731
    assert trainable(freeze_all_but_head(tiny_gpt2())) == ["score.weight"]
    assert trainable(add_adapters(tiny_llama(), ["q_proj", "v_proj"], rank=2, alpha=4)) == [
        "model.layers.0.self_attn.q_proj.lora_A", "model.layers.0.self_attn.q_proj.lora_B",
        "model.layers.0.self_attn.v_proj.lora_A", "model.layers.0.self_attn.v_proj.lora_B", "score.weight"]
    assert trainable(freeze_all_but_head(tiny_model)) == [
        "classifier.bias", "classifier.weight", "pre_classifier.bias", "pre_classifier.weight"]
    assert trainable(freeze_all_but_head(tiny_model.distilbert)) == []  # a backbone has no head


def test_a_named_head_that_is_missing_is_refused():
    with pytest.raises(ValueError, match=r"'classifier', 'pre_classifier' not found.*transformer, score"):
        freeze_all_but_head(tiny_gpt2(), ["classifier", "pre_classifier"])
    with pytest.raises(ValueError, match="'classifier' not found"):
        add_adapters(tiny_llama(), ["q_proj"], trainable_head=["classifier"])


def test_merge_draws_no_randomness_and_keeps_the_base_layers(tiny_model, tiny_batch):
    class Tagged(nn.Linear):
        pass

    layer0 = tiny_model.distilbert.transformer.layer[0].attention
    tagged = Tagged(16, 16)
    tagged.load_state_dict(layer0.q_lin.state_dict())
    calls = []
    tagged.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    layer0.q_lin = tagged
    add_adapters(tiny_model, ["q_lin", "v_lin"], method="dora")
    for _, layer in adapter_layers(tiny_model):
        randomize(layer)
    with torch.no_grad():
        expected = tiny_model(**tiny_batch).logits
        merged_weight = layer0.q_lin.merged_weight()
        state = torch.get_rng_state()
        merge_adapters(tiny_model)
        assert torch.equal(torch.get_rng_state(), state)
        assert layer0.q_lin is tagged and torch.equal(tagged.weight, merged_weight)
        calls.clear()
        torch.testing.assert_close(tiny_model(**tiny_batch).logits, expected, atol=1e-5, rtol=1e-5)
    assert calls == [(3, 7, 16)]


def test_merge_with_nan_or_inf_names_the_layer_and_merges_nothing(tiny_model):
    add_adapters(tiny_model, ["q_lin", "v_lin"])
    weights = {name: layer.base.weight.detach().clone() for name, layer in adapter_layers(tiny_model)}
    with torch.no_grad():
        tiny_model.distilbert.transformer.layer[1].attention.v_lin.lora_B.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"distilbert\.transformer\.layer\.1\.attention\.v_lin; nothing was merged"):
        merge_adapters(tiny_model)
    layers = dict(adapter_layers(tiny_model))
    assert set(layers) == set(weights)
    assert all(torch.equal(layers[name].base.weight, weights[name]) for name in weights)
