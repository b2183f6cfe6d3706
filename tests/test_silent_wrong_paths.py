"""Four paths that once gave a wrong model without an error (issue 25), each checked end to end.

Only public names (``from lowrank import ...``), so the same file runs against older code.
"""

import json
import math

import pytest
import torch
from peft import PeftModel

from lowrank import DoRALinear, add_adapters, adapter_layers, export_peft, import_peft, load_adapters, save_adapters
from tests.conftest import make_tiny_distilbert
from tests.test_layers import randomize


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def adapted(method="lora", rank=4, alpha=8, **options):
    model = add_adapters(make_tiny_distilbert(seed=0), ["q_lin", "v_lin"], method=method, rank=rank, alpha=alpha,
                         **options)
    for index, (_, layer) in enumerate(adapter_layers(model)):
        randomize(layer, seed=index)
    return model


# 1. A changed scaling (rsLoRA, as solution 01 sets it) survives save/load, PEFT export and import.

def rslora(method="lora"):
    model = adapted(method)
    for _, layer in adapter_layers(model):
        layer.scaling = layer.alpha / math.sqrt(layer.rank)  # rsLoRA: alpha / sqrt(rank)
    return model


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_rslora_scaling_survives_save_and_load(tmp_path, tiny_batch, method):
    model = rslora(method)
    save_adapters(model, tmp_path)
    fresh = load_adapters(make_tiny_distilbert(seed=0), tmp_path)
    assert {layer.scaling for _, layer in adapter_layers(fresh)} == {8 / math.sqrt(4)}
    torch.testing.assert_close(logits(fresh, tiny_batch), logits(model, tiny_batch), atol=1e-6, rtol=0)


def test_rslora_scaling_survives_peft_export_and_import(tmp_path, tiny_batch):
    model = rslora()
    export_peft(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_rslora"] is True
    with_peft = PeftModel.from_pretrained(make_tiny_distilbert(seed=0), str(tmp_path))
    torch.testing.assert_close(logits(with_peft, tiny_batch), logits(model, tiny_batch), atol=1e-5, rtol=0)
    back = import_peft(make_tiny_distilbert(seed=0), tmp_path)
    torch.testing.assert_close(logits(back, tiny_batch), logits(model, tiny_batch), atol=1e-5, rtol=0)


def test_a_scaling_no_file_can_record_is_refused(tmp_path):
    model = adapted()
    for _, layer in adapter_layers(model):
        layer.scaling = 0.3  # neither alpha/rank (2) nor alpha/sqrt(rank) (4)
    for write in (save_adapters, export_peft):
        with pytest.raises(ValueError, match="scaling=0.3 is neither"):
            write(model, tmp_path / write.__name__)
        assert not (tmp_path / write.__name__ / "adapter_config.json").exists()


# 2. A PEFT adapter whose initialisation rewrote W0 is refused on import.

@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "loftq", "corda"])
def test_import_refuses_adapters_relative_to_a_rewritten_base(tmp_path, init):
    export_peft(adapted(), tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, init_lora_weights=init)))
    model = make_tiny_distilbert(seed=0)
    with pytest.raises(ValueError, match="rewrites the base weights"):
        import_peft(model, tmp_path)
    assert list(adapter_layers(model)) == []


# 3. Adapting the head, then adding adapters elsewhere, keeps the head's base frozen; DoRA trains an unfrozen base.

@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_second_add_adapters_keeps_an_adapted_heads_base_frozen(method):
    model = add_adapters(make_tiny_distilbert(), ["classifier"], method=method, rank=2, alpha=2)
    add_adapters(model, ["q_lin"], method=method, rank=2, alpha=2)
    assert not model.classifier.base.weight.requires_grad and not model.classifier.base.bias.requires_grad
    assert model.classifier.lora_A.requires_grad and model.pre_classifier.weight.requires_grad
    frozen = [name for name, p in model.named_parameters() if ".base." in name and p.requires_grad]
    assert frozen == []


def test_dora_gives_an_unfrozen_base_its_gradient():
    """With the base unfrozen by hand, the gradient of W0 is that of ``m * V / ||V||`` (norm detached)."""
    torch.manual_seed(0)
    layer = DoRALinear(torch.nn.Linear(6, 5), rank=2, alpha=4)
    randomize(layer, seed=0)
    layer.base.requires_grad_(True)
    x = torch.randn(3, 6)
    layer(x).square().sum().backward()
    w0 = layer.base.weight.detach().clone().requires_grad_(True)
    v = w0 + layer.scaling * layer.lora_B.detach() @ layer.lora_A.detach()
    weight = layer.magnitude.detach()[:, None] * v / v.norm(dim=1, keepdim=True).detach()
    torch.nn.functional.linear(x, weight, layer.base.bias.detach()).square().sum().backward()
    assert layer.base.weight.grad is not None
    torch.testing.assert_close(layer.base.weight.grad, w0.grad, atol=1e-5, rtol=1e-5)


# 4. A model saved without a trainable head loads, and a refused load leaves the model untouched.

def test_a_model_without_a_trainable_head_saves_and_loads(tmp_path, tiny_batch):
    model = adapted(trainable_head=())
    save_adapters(model, tmp_path)
    fresh = load_adapters(make_tiny_distilbert(seed=0), tmp_path)
    torch.testing.assert_close(logits(fresh, tiny_batch), logits(model, tiny_batch), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for name, p in fresh.named_parameters() if "classifier" in name)


def test_a_refused_load_leaves_the_model_untouched(tmp_path):
    save_adapters(adapted(), tmp_path)
    other = make_tiny_distilbert(seed=0)
    other.distilbert.transformer.layer[0].attention.q_lin = torch.nn.Linear(16, 8)  # another shape: refused
    before = {name: (p.requires_grad, p.detach().clone()) for name, p in other.named_parameters()}
    with pytest.raises(ValueError, match="shape"):
        load_adapters(other, tmp_path)
    assert list(adapter_layers(other)) == []
    after = {name: (p.requires_grad, p.detach()) for name, p in other.named_parameters()}
    assert after.keys() == before.keys()
    assert all(after[n][0] == before[n][0] and torch.equal(after[n][1], before[n][1]) for n in before)
