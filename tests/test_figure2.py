"""The Figure-2 study's bookkeeping: decay factors, the first-order split, checkpoint placement."""

import math

import pytest
import torch

from lowrank import figure2
from lowrank.training import schedule_factor


def test_decay_factors_match_adamw_with_zero_gradient():
    """With a zero gradient AdamW only decays: the weight must end at exactly c_t · w0."""
    steps, lr, weight_decay = 40, 1e-2, 0.7
    weight = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    start = weight.detach().clone()
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=weight_decay)
    warmup = int(figure2.WARMUP_FRACTION * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(s, steps, warmup))
    expected = figure2.decay_factors(lr, weight_decay, steps)
    for step in range(steps):
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        schedule.step()
        torch.testing.assert_close(weight.detach(), expected[step + 1] * start, rtol=1e-12, atol=1e-12)
    assert expected[-1] < 0.9  # the test exercises a real shrink


def test_paper_strength_gives_the_target_cumulative_decay():
    for condition in figure2.CONDITIONS:
        for method in condition.methods:
            weight_decay, no_decay = figure2.decay_settings(condition, method)
            total = weight_decay * figure2.cumulative_lr(condition.regime.lr[method], condition.regime.steps)[-1]
            if condition.decay == "none":
                assert weight_decay == 0 and no_decay == ()
            else:
                assert total == pytest.approx(figure2.PAPER_CUMULATIVE_DECAY[method])
                assert "bias" in no_decay
                assert ("magnitude" in no_decay) == (condition.decay == "paper_magnitude_exempt")


def test_row_norm_carrier_decays_only_where_the_decay_reaches_it():
    condition = next(c for c in figure2.CONDITIONS if c.name == "long_wd_paper")
    assert figure2.row_norm_decay(condition, "FT")[-1] == pytest.approx(math.exp(-0.03), rel=2e-3)
    assert figure2.row_norm_decay(condition, "DoRA")[-1] == pytest.approx(math.exp(-0.3), rel=2e-2)
    assert figure2.row_norm_decay(condition, "LoRA")[-1] == 1.0
    exempt = next(c for c in figure2.CONDITIONS if c.decay == "paper_magnitude_exempt")
    assert figure2.row_norm_decay(exempt, "DoRA")[-1] == 1.0


def test_first_order_split_adds_up_for_small_changes():
    torch.manual_seed(0)
    w0 = torch.randn(32, 16, dtype=torch.float64)
    c = 0.97
    g = 1e-3 * torch.randn(32, 16, dtype=torch.float64)
    (row,) = figure2.mechanism_rows("x", "FT", {10: {"m.layer.0.q_lin": c * w0 + g}}, {"m.layer.0.q_lin": w0},
                                    [c] * 11)
    assert row.layer == 0 and row.decay_factor == c
    assert row.dm_decay == pytest.approx((c - 1) * w0.norm(dim=1).mean().item())
    predicted = row.dm_decay + row.dm_gradient + row.dm_second_order
    assert predicted == pytest.approx(row.dm_signed, rel=1e-4)
    assert row.dd_first_order == pytest.approx(row.dd_measured, rel=1e-3)


def test_placements_pick_four_of_twelve():
    chosen = figure2.placements(600)
    assert chosen == {"even": [150, 300, 450, 600], "late": [450, 500, 550, 600]}
    assert figure2.checkpoint_steps(12) == list(range(1, 13))


def test_unknown_condition_is_refused(capsys):
    with pytest.raises(SystemExit, match="unknown condition"):
        figure2.main(["--only", "nonsense"])
