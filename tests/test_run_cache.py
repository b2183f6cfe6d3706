"""lowrank.run_cache: a run is trained once and reused only when everything that decides it is the same."""

from __future__ import annotations

import copy

import pytest
import torch

from lowrank import add_adapters
from lowrank.magnitude_direction import merged_linear_weights
from lowrank.run_cache import run_key, train_once
from lowrank.timing import training_runs
from lowrank.training import seed_everything, train
from tests.helpers import make_tiny_distilbert, tiny_split

SETTINGS = dict(epochs=2, max_steps=4, batch_size=8, lr=1e-2, seed=0, progress=False)


def _adapted(seed: int = 0):
    model = make_tiny_distilbert()
    seed_everything(seed)  # the draw of A
    return add_adapters(model, ["q_lin", "v_lin"], rank=2, alpha=4)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_second_identical_run_is_loaded_not_trained(tmp_path, monkeypatch, capsys):
    data = tiny_split()
    first = _adapted()
    trained = train_once(first, data, data, cache=tmp_path, eval_every=2, **SETTINGS)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("an identical run was trained again")

    monkeypatch.setattr("lowrank.run_cache.train", refuse)
    second = _adapted()
    reused = train_once(second, data, data, cache=tmp_path, eval_every=2, description="again", **SETTINGS)
    assert "reused the identical run" in capsys.readouterr().out
    assert training_runs()[-2:] == [  # what tools/run_course.py's breakdown per run reads
        {"description": "training", "steps": 4, "seconds": round(sum(trained.step_seconds), 1), "reused": False},
        {"description": "again", "steps": 4, "seconds": training_runs()[-1]["seconds"], "reused": True}]
    assert not second.training  # left in eval mode, as train leaves it
    for name, value in _trainable(first).items():
        assert torch.equal(value, _trainable(second)[name]), name
    assert reused.losses == trained.losses and reused.evaluations == trained.evaluations
    assert reused.steps == trained.steps == 4 and reused.step_seconds == trained.step_seconds
    x = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    assert torch.equal(first(**x).logits, second(**x).logits)


def test_the_reused_run_equals_a_fresh_training_of_it(tmp_path):
    """What comes back from the cache is what train would have produced (same weights, same losses)."""
    data = tiny_split()
    train_once(_adapted(), data, cache=tmp_path, **SETTINGS)
    reused = _adapted()
    result = train_once(reused, data, cache=tmp_path, **SETTINGS)
    fresh = _adapted()
    expected = train(fresh, data, **SETTINGS)
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    for name, value in _trainable(fresh).items():
        assert torch.allclose(value, _trainable(reused)[name], atol=1e-6), name


@pytest.mark.parametrize("change", ["draw of A", "learning rate", "data", "eval data", "steps", "decay",
                                    "already trained", "what trains", "precision"])
def test_anything_that_changes_the_run_changes_the_key(change):
    data = tiny_split()
    model = _adapted()
    base = dict(SETTINGS)
    key = run_key(model, data, None, **base)
    other_model, other_data, other_eval, settings = model, data, None, dict(base)
    if change == "draw of A":
        other_model = _adapted(seed=1)
    elif change == "learning rate":
        settings["lr"] = 2e-2
    elif change == "data":
        other_data = tiny_split(25)
    elif change == "eval data":
        other_eval = data
    elif change == "steps":
        settings["max_steps"] = 5
    elif change == "decay":
        settings["weight_decay"] = 0.0
    elif change == "already trained":
        other_model = copy.deepcopy(model)
        train(other_model, data, **SETTINGS)
    elif change == "what trains":
        other_model = copy.deepcopy(model)
        other_model.classifier.weight.requires_grad_(False)
    elif change == "precision":
        settings["autocast_dtype"] = torch.bfloat16
    assert run_key(other_model, other_data, other_eval, **settings) != key


def test_what_is_only_displayed_does_not_change_the_key():
    data = tiny_split()
    model = _adapted()
    assert run_key(model, data, progress=False, description="a") == run_key(model, data, progress=True,
                                                                             description="b")


def test_snapshots_need_a_key_and_come_back_from_the_cache(tmp_path):
    data = tiny_split()
    pattern = r"\.(q_lin|v_lin)$"
    snapshot = dict(snapshot_steps=[0, 2, 4], snapshot=lambda m: merged_linear_weights(m, pattern))
    with pytest.raises(ValueError, match="snapshot_key"):
        train_once(_adapted(), data, cache=tmp_path, **snapshot, **SETTINGS)
    trained = train_once(_adapted(), data, cache=tmp_path, snapshot_key=pattern, **snapshot, **SETTINGS)
    reused = train_once(_adapted(), data, cache=tmp_path, snapshot_key=pattern, **snapshot, **SETTINGS)
    assert sorted(reused.snapshots) == [0, 2, 4]
    for step, weights in trained.snapshots.items():
        for name, weight in weights.items():
            assert torch.equal(reused.snapshots[step][name], weight)
    # another snapshot key is another run: it trains and files a second entry
    train_once(_adapted(), data, cache=tmp_path, snapshot_key="q only", **snapshot, **SETTINGS)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_off_trains_every_time_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_RUN_CACHE", "off")
    data = tiny_split()
    train_once(_adapted(), data, **SETTINGS)
    train_once(_adapted(), data, cache=False, **SETTINGS)
    assert not list(tmp_path.iterdir())


def test_an_interrupted_run_is_not_saved(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lowrank.run_cache.train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_once(_adapted(), tiny_split(), cache=tmp_path, **SETTINGS)
    assert not list(tmp_path.glob("*.pt"))


def test_a_prebuilt_optimizer_is_refused(tmp_path):
    model = _adapted()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(TypeError, match="optimizer"):
        train_once(model, tiny_split(), cache=tmp_path, optimizer=optimizer, **SETTINGS)


def test_a_default_passed_explicitly_keys_the_same_run():
    """Notebook 04 leaves weight_decay and warmup_fraction at train's defaults; solutions/04 writes them out."""
    data = tiny_split()
    model = _adapted()
    assert run_key(model, data, **SETTINGS) == run_key(model, data, weight_decay=0.01, warmup_fraction=0.06,
                                                       **SETTINGS)
