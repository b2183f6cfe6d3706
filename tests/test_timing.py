import pytest

from lowrank.timing import interleaved_medians


def test_calls_in_turn_and_reports_each():
    calls = []
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three
    assert set(medians) == {"a", "b"} and all(v >= 0 for v in medians.values())


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_medians({"a": lambda: None}, rounds=0)


def test_no_grad_forward_runs_without_autograd():
    import torch

    from lowrank.timing import no_grad_forward

    layer = torch.nn.Linear(3, 2)
    output = no_grad_forward(lambda x: layer(x), {"x": torch.ones(1, 3)})()
    assert output.shape == (1, 2) and not output.requires_grad
