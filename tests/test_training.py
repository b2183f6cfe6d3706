import pytest
import torch
from datasets import Dataset

from lowrank import add_adapters
from lowrank.training import accuracy, predict, train


def tiny_split(n: int = 24) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        length = 3 + i % 5
        ids = torch.randint(1, 100, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "label": i % 2})
    return Dataset.from_list(rows)


def test_train_snapshots_requested_steps_and_evaluates(tiny_model):
    add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)
    data = tiny_split()
    seen = []
    result = train(tiny_model, data, data, epochs=2, batch_size=8, lr=1e-2, snapshot_steps=[0, 2, 6],
                   snapshot=lambda m: {"w": m.classifier.weight.detach().clone()}, progress=False)
    seen = sorted(result.snapshots)
    assert seen == [0, 2, 6] and result.steps == 6 and len(result.losses) == 6
    assert not torch.equal(result.snapshots[0]["w"], result.snapshots[6]["w"])
    assert result.evaluations[-1][0] == 6 and 0.0 <= result.evaluations[-1][1] <= 1.0
    assert result.seconds_per_step > 0


def test_predict_keeps_row_order(tiny_model):
    data = tiny_split()
    logits = predict(tiny_model, data, batch_size=5)
    for i in (0, 7, 23):
        row = data[i]
        with torch.no_grad():
            single = tiny_model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        torch.testing.assert_close(logits[i], single, atol=1e-5, rtol=1e-5)
    assert accuracy(tiny_model, data) == (logits.argmax(-1) == torch.tensor(data["label"])).float().mean().item()


def test_training_is_reproducible(tiny_model):
    import copy

    data = tiny_split()
    runs = []
    for _ in range(2):
        model = add_adapters(copy.deepcopy(tiny_model), ["q_lin"], rank=2, alpha=4)
        runs.append(train(model, data, max_steps=3, batch_size=8, progress=False).losses)
    assert runs[0] == runs[1]


def test_nothing_to_train_is_refused(tiny_model):
    tiny_model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(tiny_model, tiny_split(), progress=False)
