import pytest
import torch
from transformers import DistilBertForSequenceClassification

from lowrank.backbone import difference_from_original_bert, linear_names, load_backbone


@pytest.fixture(scope="module")
def embedded():
    return load_backbone("embedded")


def test_embedded_is_a_distilbert_with_real_module_names(embedded):
    model, tokenizer = embedded
    assert isinstance(model, DistilBertForSequenceClassification)
    names = linear_names(model)
    assert "distilbert.transformer.layer.5.attention.q_lin" in names
    assert len([n for n in names if n.endswith(("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"))]) == 36
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]


def test_conversion_matches_the_bert_model(embedded):
    model, tokenizer = embedded
    batch = tokenizer(["LoRA keeps the pretrained weights frozen.", "short one"], padding=True, return_tensors="pt")
    assert difference_from_original_bert(model, batch) < 1e-5


def test_head_is_seeded():
    first, _ = load_backbone(seed=3)
    second, _ = load_backbone(seed=3)
    torch.testing.assert_close(first.classifier.weight, second.classifier.weight)


def test_unknown_name_offline_says_how_to_fix():
    with pytest.raises(ValueError, match=r"could not load backbone 'no-such/model'.*name='embedded'"):
        load_backbone("no-such/model")


def test_bad_arguments():
    with pytest.raises(TypeError, match="name must be a string"):
        load_backbone(3)
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        load_backbone(num_labels=0)
