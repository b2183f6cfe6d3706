"""Save/load and PEFT export/import round trips, compared on logits, and every bad input."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from lowrank import add_adapters, adapter_layers
from lowrank.adapter_files.format import write_adapter_files
from lowrank.adapter_files.peft_interop import export_peft, import_peft
from lowrank.adapter_files.save_load import adapter_config, load_adapters, save_adapters, trainable_tensors
from tests.conftest import make_tiny_distilbert
from tests.test_layers import randomize


def trained(method: str, rank: int = 2, targets=("q_lin", "v_lin")):
    model = add_adapters(make_tiny_distilbert(seed=0), list(targets), method=method, rank=rank, alpha=4)
    for index, (_, layer) in enumerate(adapter_layers(model)):
        randomize(layer, seed=index)
    with torch.no_grad():
        model.classifier.weight.add_(0.5)
    return model.eval()


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_save_load_round_trip(tmp_path, tiny_batch, method):
    model = trained(method)
    save_adapters(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["method"] == method
    fresh = load_adapters(make_tiny_distilbert(seed=0), tmp_path).eval()
    torch.testing.assert_close(logits(fresh, tiny_batch), logits(model, tiny_batch), atol=1e-6, rtol=0)
    stored = load_file(tmp_path / "adapters.safetensors")
    assert all(("lora_" in k or "magnitude" in k or "classifier" in k) for k in stored)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_export_to_peft_and_back(tmp_path, tiny_batch, method):
    model = trained(method)
    export_peft(model, tmp_path)
    with_peft = PeftModel.from_pretrained(make_tiny_distilbert(seed=0), str(tmp_path)).eval()
    torch.testing.assert_close(logits(with_peft, tiny_batch), logits(model, tiny_batch), atol=1e-5, rtol=0)
    back = import_peft(make_tiny_distilbert(seed=0), tmp_path).eval()
    torch.testing.assert_close(logits(back, tiny_batch), logits(model, tiny_batch), atol=1e-5, rtol=0)


def test_import_an_adapter_that_peft_saved(tmp_path, tiny_batch):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(make_tiny_distilbert(seed=0), LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_lin", "lin1"], use_dora=True, modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.normal_()
    peft_model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="adapter_model.safetensors carries no tensor digests"):
        ours = import_peft(make_tiny_distilbert(seed=0), tmp_path).eval()
    torch.testing.assert_close(logits(ours, tiny_batch), logits(peft_model.eval(), tiny_batch), atol=1e-5, rtol=0)


def test_a_crash_mid_save_keeps_the_previous_save(tmp_path, tiny_batch, monkeypatch):
    model = trained("lora")
    save_adapters(model, tmp_path)
    before = (tmp_path / "adapters.safetensors").read_bytes()
    import safetensors.torch

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_adapters(model, tmp_path)
    assert (tmp_path / "adapters.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_other_rank_or_other_backbone_is_refused(tmp_path):
    save_adapters(trained("lora", rank=2), tmp_path)
    with pytest.raises(ValueError, match=r"the file has rank=2 but the model's adapters have rank=4"):
        load_adapters(add_adapters(make_tiny_distilbert(), ["q_lin", "v_lin"], rank=4, alpha=4), tmp_path)
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    wider = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, max_position_embeddings=32, n_layers=2, n_heads=2, dim=24, hidden_dim=32))
    with pytest.raises(ValueError, match=r"has shape \(2, 16\) in the file but \(2, 24\) in the model"):
        load_adapters(wider, tmp_path)


# Each setting in which a file and the adapters already in the model differ, with the message that
# names it. Before these checks, alpha and dropout loaded silently (wrong outputs), method and
# targets failed on a tensor name, and rank on a shape.
SETTINGS = [
    ("method", dict(method="dora"), r"the file has method=lora but the model's adapters have method=dora"),
    ("rank", dict(rank=4), r"the file has rank=2 but the model's adapters have rank=4"),
    ("alpha", dict(alpha=8), r"the file has alpha=4 but the model's adapters have alpha=8"),
    ("dropout", dict(dropout=0.1), r"the file has dropout=0 but the model's adapters have dropout=0.1"),
    ("targets", dict(targets=["q_lin"]), r"the file has targets=\['q_lin', 'v_lin'\] \(4 modules\) but the model's "
                                         r"adapters have targets=\['q_lin'\] \(2 modules\) \(first difference: 'distil"
                                         r"bert.transformer.layer.0.attention.v_lin', adapted only in the file\)"),
    ("targets", dict(targets=["q_lin", "v_lin", "k_lin"]), r"the file has targets=\['q_lin', 'v_lin'\] \(4 modules\) "
                                                           r"but the model's adapters have targets=\['k_lin', 'q_lin', "
                                                           r"'v_lin'\] \(6 modules\) \(first difference: .*k_lin', "
                                                           r"adapted only in the model\)"),
]


@pytest.mark.parametrize("field, change, message", SETTINGS, ids=[f"{s[0]}-{i}" for i, s in enumerate(SETTINGS)])
@pytest.mark.parametrize("route", ["save/load", "export/import"])
def test_a_file_with_other_settings_than_the_models_adapters_is_refused(tmp_path, field, change, message, route):
    save, load = (save_adapters, load_adapters) if route == "save/load" else (export_peft, import_peft)
    save(trained("lora", rank=2), tmp_path)  # alpha 4, dropout 0, q_lin and v_lin
    settings = dict(dict(targets=["q_lin", "v_lin"], method="lora", rank=2, alpha=4, dropout=0.0), **change)
    model = add_adapters(make_tiny_distilbert(seed=1), settings.pop("targets"), **settings)
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        load(model, tmp_path)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters()), "refused, yet changed"


def test_a_file_with_the_same_settings_loads_into_existing_adapters(tmp_path, tiny_batch):
    model = trained("dora")
    save_adapters(model, tmp_path)
    export_peft(model, tmp_path / "peft")
    for load, folder in ((load_adapters, tmp_path), (import_peft, tmp_path / "peft")):
        target = add_adapters(make_tiny_distilbert(seed=0), ["q_lin", "v_lin"], method="dora", rank=2, alpha=4.0)
        torch.testing.assert_close(logits(load(target, folder).eval(), tiny_batch), logits(model, tiny_batch),
                                   atol=1e-5, rtol=0)


def test_a_dora_file_missing_its_magnitudes_is_refused(tmp_path):
    model = trained("dora")
    tensors = {k: v for k, v in trainable_tensors(model).items() if not k.endswith(".magnitude")}
    write_adapter_files(tmp_path, "adapters.safetensors", tensors, {"lowrank": json.dumps(adapter_config(model))},
                        adapter_config(model))
    with pytest.raises(ValueError, match=r"lacks 4 tensor\(s\) the model trains, first '.*magnitude'"):
        load_adapters(make_tiny_distilbert(), tmp_path)


def test_corrupt_truncated_and_missing_files(tmp_path):
    save_adapters(trained("lora"), tmp_path)
    path = tmp_path / "adapters.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_adapters(make_tiny_distilbert(), tmp_path)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_adapters(make_tiny_distilbert(), tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_adapters(make_tiny_distilbert(), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="does not exist: not a PEFT adapter folder"):
        import_peft(make_tiny_distilbert(), tmp_path / "nowhere")


@pytest.mark.parametrize("field", ["method", "rank", "alpha", "dropout", "targets"])
def test_missing_config_field_is_named(tmp_path, field):
    model = trained("lora")
    save_adapters(model, tmp_path)
    path = tmp_path / "adapters.safetensors"
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        config = json.loads(handle.metadata()["lowrank"])
    del config[field]
    write_adapter_files(tmp_path, "adapters.safetensors", tensors, {"lowrank": json.dumps(config)}, config)
    with pytest.raises(ValueError, match=f"configuration field '{field}' is missing"):
        load_adapters(make_tiny_distilbert(), tmp_path)


def test_peft_config_problems(tmp_path):
    export_peft(trained("dora"), tmp_path)
    config_path = tmp_path / "adapter_config.json"
    original = json.loads(config_path.read_text())
    for change, message in [({"r": None}, "field 'r' is missing"), ({"fan_in_fan_out": True}, "fan_in_fan_out"),
                            ({"target_modules": ".*q_lin"}, "is a regex"), ({"peft_type": "IA3"}, "is not LORA")]:
        edited = dict(original, **change)
        edited = {k: v for k, v in edited.items() if v is not None}
        config_path.write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=message):
            import_peft(make_tiny_distilbert(), tmp_path)
    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        import_peft(make_tiny_distilbert(), tmp_path)


def test_saving_a_model_without_adapters_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no LoRA/DoRA layers"):
        save_adapters(make_tiny_distilbert(), tmp_path)
