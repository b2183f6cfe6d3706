import copy
import statistics

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

import lowrank.training
from lowrank import add_adapters
from lowrank.settings import bf16_is_fast, training_dtype
from lowrank.training import accuracy, batches, predict, train
from tests.helpers import tiny_split


def test_train_snapshots_requested_steps_and_evaluates(tiny_model):
    add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)
    data = tiny_split()
    result = train(tiny_model, data, data, epochs=2, batch_size=8, lr=1e-2, snapshot_steps=[0, 2, 6],
                   snapshot=lambda m: {"w": m.classifier.weight.detach().clone()}, progress=False)
    assert sorted(result.snapshots) == [0, 2, 6] and result.steps == 6 and len(result.losses) == 6
    assert not torch.equal(result.snapshots[0]["w"], result.snapshots[6]["w"])
    assert result.evaluations == [(6, accuracy(tiny_model, data))]
    assert result.seconds_per_step == statistics.median(result.step_seconds[1:])


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_training_loss_falls_on_an_easy_task(tiny_model, method):
    data = tiny_split(64, easy=True)
    add_adapters(tiny_model, ["q_lin", "v_lin"], method=method, rank=2, alpha=4)
    result = train(tiny_model, data, epochs=5, batch_size=8, lr=1e-2, warmup_fraction=0.0, progress=False)
    assert result.steps == 40
    first, last = statistics.fmean(result.losses[:8]), statistics.fmean(result.losses[-8:])
    assert last < 0.5 * first, (first, last)
    assert accuracy(tiny_model, data) >= 0.95


def test_predict_keeps_row_order(tiny_model):
    data = tiny_split()
    logits = predict(tiny_model, data, batch_size=5)
    for i in (0, 7, 23):
        row = data[i]
        with torch.no_grad():
            single = tiny_model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        torch.testing.assert_close(logits[i], single, atol=1e-5, rtol=1e-5)
    assert accuracy(tiny_model, data) == (logits.argmax(-1) == torch.tensor(data["label"])).float().mean().item()


def test_padding_uses_the_models_pad_id():
    """GPT-2 classifies from the last token that is not its pad id: padding with 0 would pick a pad."""
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=99)).eval()
    data = tiny_split()
    logits = predict(model, data, batch_size=8)
    for i in (0, 1, 2, 3):  # lengths 3 to 6: padded in their batch of 8
        with torch.no_grad():
            single = model(input_ids=torch.tensor([data[i]["input_ids"]])).logits[0]
        torch.testing.assert_close(logits[i], single, atol=1e-5, rtol=1e-5)
    ids = next(batches(data, 8, shuffle=False, pad_token_id=1))["input_ids"]  # RoBERTa pads with 1
    assert (ids[0, 3:] == 1).all() and ids[0, :3].tolist() == data[0]["input_ids"]
    model.config.pad_token_id = None
    with pytest.raises(ValueError, match="pass pad_token_id=tokenizer.pad_token_id"):
        predict(model, data)


def test_step_times_wait_for_the_device(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(lowrank.training, "synchronize", calls.append)
    add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)
    result = train(tiny_model, tiny_split(), max_steps=3, batch_size=8, progress=False)
    assert result.steps == 3 and calls == [torch.device("cpu")] * 6  # before and after each step


def test_training_is_reproducible(tiny_model):
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


@pytest.mark.parametrize("setting, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                               ("", "auto"), ("auto", "auto")])
def test_precision_setting_decides_the_forward_dtype(tiny_model, monkeypatch, setting, expected):
    monkeypatch.setenv("LOWRANK_PRECISION", setting)
    if expected == "auto":  # the default: bf16 where the hardware multiplies it, else fp32
        expected = torch.bfloat16 if bf16_is_fast("cpu") else torch.float32
    model = add_adapters(copy.deepcopy(tiny_model), ["q_lin", "v_lin"], rank=2, alpha=4)
    seen = []
    hook = model.distilbert.transformer.layer[0].attention.q_lin.register_forward_hook(
        lambda module, args, output: seen.append(output.dtype) if module.training else None)
    result = train(model, tiny_split(32), batch_size=16, lr=1e-3, progress=False,
                   autocast_dtype=training_dtype("cpu"))  # resolved by the caller, as a notebook does
    hook.remove()
    assert set(seen) == {expected}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and adapters stay fp32
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)


def test_unknown_precision_is_refused(monkeypatch):
    monkeypatch.setenv("LOWRANK_PRECISION", "fp8")
    with pytest.raises(ValueError, match="LOWRANK_PRECISION='fp8' is not a precision"):
        training_dtype("cpu")


@pytest.mark.parametrize("setting", ["bf16", "fp8"])
def test_train_s_precision_is_its_argument_not_the_environment(tiny_model, monkeypatch, setting):
    """No global decides a library function's precision: the default is the model's own dtype."""
    monkeypatch.setenv("LOWRANK_PRECISION", setting)
    model = add_adapters(copy.deepcopy(tiny_model), ["q_lin"], rank=2, alpha=4)
    seen = []
    model.distilbert.transformer.layer[0].attention.q_lin.register_forward_hook(
        lambda module, args, output: seen.append(output.dtype) if module.training else None)
    train(model, tiny_split(16), batch_size=8, progress=False)
    assert set(seen) == {torch.float32}
    with pytest.raises(TypeError, match="autocast_dtype=setup.autocast_dtype"):
        train(model, tiny_split(16), batch_size=8, progress=False, autocast_dtype="settings")


def test_logits_accuracy_scores_given_predictions_and_checks_their_length():
    from datasets import Dataset

    from lowrank.training import logits_accuracy

    data = Dataset.from_dict({"label": [0, 1, 1, 0]})
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.5]])
    assert logits_accuracy(logits, data) == 0.75
    with pytest.raises(ValueError, match="3 rows of logits for a split of 4"):
        logits_accuracy(logits[:3], data)


def _padded_batch() -> dict[str, torch.Tensor]:
    lengths = [5, 2, 7, 3, 7, 1]
    ids = torch.zeros(len(lengths), 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.arange(1, n + 1) + 10 * row
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(lengths)) % 2}


def test_length_groups_partition_the_batch_into_shorter_groups():
    batch = _padded_batch()
    groups = list(lowrank.training.length_groups(batch, 4))
    assert [share for _, share in groups] == [4 / 6, 2 / 6]
    assert [group["input_ids"].shape for group, _ in groups] == [(4, 5), (2, 7)]  # each cut to its longest row
    seen = sorted(tuple(row[row != 0].tolist()) for group, _ in groups for row in group["input_ids"])
    assert seen == sorted(tuple(row[row != 0].tolist()) for row in batch["input_ids"])
    for group, _ in groups:  # labels and masks travel with their rows
        first_ids = group["input_ids"][:, 0].tolist()
        assert group["labels"].tolist() == [(i // 10) % 2 for i in first_ids]
        assert group["attention_mask"].sum(1).tolist() == (group["input_ids"] != 0).sum(1).tolist()
    assert list(lowrank.training.length_groups(batch, None)) == [(batch, 1.0)]
    assert list(lowrank.training.length_groups(batch, 6)) == [(batch, 1.0)]
    with pytest.raises(ValueError, match="positive integer or None"):
        next(lowrank.training.length_groups(batch, 0))


def test_length_groups_give_the_whole_batch_gradient(tiny_model):
    """Without dropout, the weighted group losses accumulate the whole batch's loss and gradient."""
    batch = _padded_batch()
    whole, grouped = tiny_model, copy.deepcopy(tiny_model)
    loss = whole(**batch).loss
    loss.backward()
    total = 0.0
    for group, share in lowrank.training.length_groups(batch, 2):
        part = grouped(**group).loss * share
        part.backward()
        total += part.item()
    assert total == pytest.approx(loss.item(), abs=1e-6)
    for (name, a), b in zip(whole.named_parameters(), grouped.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_micro_batches_train_like_whole_batches(tiny_model):
    data = tiny_split()
    start = add_adapters(tiny_model, ["q_lin", "v_lin"], rank=2, alpha=4)
    runs = {}
    for size in (None, 3):
        model = copy.deepcopy(start)
        runs[size] = (train(model, data, epochs=2, batch_size=8, lr=1e-2, progress=False, micro_batch_size=size,
                            autocast_dtype=None), model)  # fp32: the comparison is of the maths, not of bf16 rounding
    (whole, whole_model), (micro, micro_model) = runs[None], runs[3]
    assert micro.steps == whole.steps == 6
    assert micro.losses == pytest.approx(whole.losses, abs=1e-5)
    for a, b in zip(whole_model.parameters(), micro_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_micro_batch_size_auto_splits_on_cpu_only():
    resolve = lowrank.training.resolve_micro_batch_size
    assert resolve("auto", torch.device("cpu")) == lowrank.training.CPU_MICRO_BATCH
    assert resolve("auto", torch.device("cpu"), torch.bfloat16) == lowrank.training.CPU_MICRO_BATCH_BF16
    assert resolve("auto", torch.device("cuda")) is None
    assert resolve(16, torch.device("cuda")) == 16 and resolve(None, torch.device("cpu")) is None
    for bad in ("Auto", 0, 2.5, True):
        with pytest.raises(ValueError, match="'auto', a positive integer or None"):
            resolve(bad, torch.device("cpu"))


def lora_plus_groups(model, ratio: float, lr: float) -> list[dict]:
    """LoRA+ (Hayou et al., 2024): B at ``ratio`` times A's learning rate; the head at A's."""
    b = [p for name, p in model.named_parameters() if p.requires_grad and name.endswith("lora_B")]
    rest = [p for name, p in model.named_parameters() if p.requires_grad and not name.endswith("lora_B")]
    return [{"params": rest, "lr": lr}, {"params": b, "lr": ratio * lr}]


def test_lora_plus_groups_train_as_a_hand_written_loop(tiny_model):
    """train with parameter groups = plain AdamW over the same groups, each lr decayed linearly by hand."""
    data, lr, steps = tiny_split(), 1e-3, 6
    start = add_adapters(tiny_model, ["q_lin", "v_lin"], rank=2, alpha=4)
    ours = copy.deepcopy(start)
    train(ours, data, epochs=2, batch_size=8, lr=lr, warmup_fraction=0.0, weight_decay=0.0, progress=False,
          micro_batch_size=None, optimizer=lora_plus_groups(ours, 16, lr))

    by_hand = copy.deepcopy(start)
    groups = lora_plus_groups(by_hand, 16, lr)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0, foreach=False)
    peak = [group["lr"] for group in groups]
    lowrank.training.seed_everything(0)
    by_hand.train()
    taken = 0
    for epoch in range(2):
        for batch in batches(data, 8, shuffle=True, seed=epoch, pad_token_id=0):
            for group, top in zip(optimizer.param_groups, peak):
                group["lr"] = top * (steps - taken) / steps  # no warm-up, linear decay to 0
            optimizer.zero_grad()
            by_hand(**batch).loss.backward()
            optimizer.step()
            taken += 1
    assert taken == steps
    for (name, a), b in zip(ours.named_parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)

    same_lr = copy.deepcopy(start)  # and the groups matter: B at A's rate ends elsewhere
    train(same_lr, data, epochs=2, batch_size=8, lr=lr, warmup_fraction=0.0, weight_decay=0.0, progress=False,
          micro_batch_size=None, optimizer=lora_plus_groups(same_lr, 1, lr))
    b_name = "distilbert.transformer.layer.0.attention.q_lin.lora_B"
    assert not torch.allclose(dict(same_lr.named_parameters())[b_name], dict(ours.named_parameters())[b_name])


def test_an_optimizer_passed_in_is_stepped_and_must_cover_every_trainable_parameter(tiny_model):
    model = add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = model.classifier.weight.detach().clone()
    train(model, tiny_split(), max_steps=2, batch_size=8, progress=False, optimizer=optimizer)
    assert optimizer.state_dict()["param_groups"][0]["initial_lr"] == 0.1  # the schedule scaled this one
    assert not torch.equal(before, model.classifier.weight)
    only_b = [{"params": [p for n, p in model.named_parameters() if n.endswith("lora_B")]}]
    with pytest.raises(ValueError, match="leave out .* trainable parameter"):
        train(model, tiny_split(), max_steps=1, batch_size=8, progress=False, optimizer=only_b)


def test_ctrl_c_is_raised_again_with_the_partial_result(tiny_model):
    """A cell that trains several runs stops at the first Ctrl-C instead of starting the next run."""
    model = add_adapters(tiny_model, ["q_lin"], rank=2, alpha=4)

    def interrupt_at_step_2(m):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(1)
        return {}

    seen: list[int] = []
    with pytest.raises(KeyboardInterrupt) as caught:
        train(model, tiny_split(), max_steps=5, batch_size=8, progress=False, snapshot_steps=[0, 1, 2, 3],
              snapshot=interrupt_at_step_2)
    partial = caught.value.train_result
    assert partial.interrupted and partial.steps == 2 and len(partial.losses) == 2
    assert not model.training  # left in eval mode


def test_predict_puts_logits_back_with_the_order_batches_uses(tiny_model, monkeypatch):
    """One place decides the order: change it, and predict still returns the split's order."""
    data = tiny_split()
    expected = predict(tiny_model, data, batch_size=5)
    original = lowrank.training.batch_order
    monkeypatch.setattr(lowrank.training, "batch_order",
                        lambda lengths, shuffle, seed=0: list(reversed(original(lengths, shuffle, seed))))
    assert next(batches(data, 5, shuffle=False, pad_token_id=0))["input_ids"].shape[1] == max(
        len(ids) for ids in data["input_ids"])  # the longest rows come first now
    torch.testing.assert_close(predict(tiny_model, data, batch_size=5), expected, atol=1e-5, rtol=1e-5)
