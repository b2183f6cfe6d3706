from types import SimpleNamespace

import pytest
import torch

import lowrank.timing
from lowrank.timing import interleaved_medians, no_grad_forward, synchronize


def test_calls_in_turn_and_reports_each_median(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(lowrank.timing, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = {"a": iter([100, 1, 9, 3]), "b": iter([100, 5, 6, 50])}  # the first call is the warm-up
    calls = []

    def contender(name):
        def run():
            calls.append(name)
            clock[0] += next(durations[name])
        return run

    medians = interleaved_medians({"a": contender("a"), "b": contender("b")}, rounds=3)
    assert calls == ["a", "b"] * 4
    assert medians == {"a": 3, "b": 6}


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_medians({"a": lambda: None}, rounds=0)


def test_no_grad_forward_runs_without_autograd():
    layer = torch.nn.Linear(3, 2)
    output = no_grad_forward(lambda x: layer(x), {"x": torch.ones(1, 3)})()
    assert output.shape == (1, 2) and not output.requires_grad


def test_synchronize_waits_for_cuda_devices_only(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    synchronize("cpu")
    synchronize(torch.device("cpu"))
    assert waited == []
    synchronize(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)]


def test_matmul_rate_is_a_positive_rate():
    from lowrank.timing import matmul_gflops

    assert matmul_gflops(size=64, repeats=2) > 0
