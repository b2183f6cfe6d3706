"""The Figure-2 study's bookkeeping: decay factors, the first-order split, checkpoint placement, the norm swap,
and the robustness statistics (exact permutation p, leave-one-layer-out)."""

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
                assert total == pytest.approx(condition.decay_scale * figure2.PAPER_CUMULATIVE_DECAY[method])
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


def _tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=3, n_heads=2, hidden_dim=32, max_position_embeddings=16)
    model = DistilBertForSequenceClassification(config).eval()
    with torch.no_grad():  # give the layers clearly different row norms, falling with depth, and non-zero biases
        for depth, layer in enumerate(model.distilbert.transformer.layer):
            for linear in (layer.attention.q_lin, layer.attention.v_lin):
                linear.weight.mul_(2.0 - 0.5 * depth)
                linear.bias.normal_()
            layer.attention.k_lin.bias.normal_()
            layer.attention.out_lin.bias.normal_()
    return model


def test_reverse_row_norms_keeps_the_function_and_reverses_the_norms():
    import copy

    model = _tiny_distilbert()
    swapped = copy.deepcopy(model)
    scales = figure2.reverse_row_norms(swapped)
    ids = torch.randint(1, 50, (4, 10))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # padding too
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        after = swapped(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    for name in ("q_lin", "v_lin"):
        norms = [getattr(b.attention, name).weight.norm(dim=1).mean().item() for b in model.distilbert.transformer.layer]
        new = [getattr(b.attention, name).weight.norm(dim=1).mean().item() for b in swapped.distilbert.transformer.layer]
        assert new == pytest.approx(norms[::-1], rel=1e-5)
    assert scales["query"][0] < 1 < scales["query"][-1]  # the largest norms move from the first layer to the last


def test_max_output_difference_sees_a_change():
    import copy

    from datasets import Dataset

    model = _tiny_distilbert()
    model.config.pad_token_id = 0
    data = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6, 7]], "label": [0, 1]})
    assert figure2.max_output_difference(model, copy.deepcopy(model), data) == 0.0
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(0.5)
    assert figure2.max_output_difference(model, other, data) == pytest.approx(0.5)


def _panel(dd, dm, steps=(1,)):
    """Points for layers 0..n-1 at each step; ``dd``/``dm`` are per layer (the same at every step plus the step)."""
    from lowrank.magnitude_direction import MagnitudeDirectionPoint

    return [MagnitudeDirectionPoint("FT", f"m.layer.{i}.q_lin", i, step, m + step, d + step)
            for step in steps for i, (d, m) in enumerate(zip(dd, dm))]


def test_exact_permutation_p_on_a_hand_case():
    points = _panel([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])  # r = -1: of the 3! pairings only the identity reaches it
    assert figure2.layer_permutation_p(points, "pooled", alternative="less") == pytest.approx(1 / 6)
    assert figure2.layer_permutation_p(points, "pooled", alternative="greater") == pytest.approx(1)
    assert figure2.layer_permutation_p(points, "pooled", alternative="two-sided") == pytest.approx(2 / 6)
    # within checkpoints: the same pairing at both steps, so still 1 of 6 (the shared step trend is removed)
    two = _panel([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], steps=(1, 2))
    assert figure2.layer_permutation_p(two, "within checkpoints", alternative="less") == pytest.approx(1 / 6)


def test_leave_one_layer_out_finds_the_layer_that_carries_the_sign():
    # three layers with a positive tie and one outlier layer (3) that makes the whole correlation negative
    points = _panel([1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, -20.0])
    from lowrank.magnitude_direction import pooled_correlation

    assert pooled_correlation(points) < 0
    loo = figure2.leave_one_layer_out(points, "pooled")
    assert set(loo) == {0, 1, 2, 3}
    assert loo[3] == pytest.approx(1.0)
    assert all(loo[layer] < 0 for layer in (0, 1, 2))


def test_dose_scales_lambda_and_the_swap_is_recorded():
    dose = next(c for c in figure2.CONDITIONS if c.decay_scale == 2.0)
    base = next(c for c in figure2.CONDITIONS if c.name == "short_wd_paper")
    assert figure2.decay_settings(dose, "DoRA")[0] == pytest.approx(2 * figure2.decay_settings(base, "DoRA")[0])
    assert any(c.swap == "reverse" and c.decay == "paper" for c in figure2.CONDITIONS)
    done = {(c.name, m) for c in figure2.CONDITIONS for m in c.methods}
    assert done.isdisjoint((c.name, m) for c in figure2.PENDING_CONDITIONS for m in c.methods)


def test_ranks_put_the_largest_first():
    assert figure2.ranks([0.2, 0.9, 0.5]) == [3, 1, 2]


def test_study_in_two_processes_gives_what_one_gives(tmp_path):
    # Two runs trained at once in worker processes, the parent writing: same points and records as one at a time.
    tiny = figure2.Regime("tiny", steps=12, batch_size=2, lr={"FT": 1e-3, "DoRA": 1e-3})
    conditions = [figure2.Condition("tiny_wd_paper", tiny, "paper", methods=("FT", "DoRA"))]
    sizes = dict(train_size=32, eval_size=16, progress=False)
    one = figure2.run_study(tmp_path / "one", conditions, jobs=1, **sizes)
    two = figure2.run_study(tmp_path / "two", conditions, jobs=2, **sizes)
    assert one.keys() == two.keys() == {"tiny_wd_paper/FT", "tiny_wd_paper/DoRA"}
    for key in one:
        assert one[key].test_accuracy == two[key].test_accuracy
        assert one[key].weight_decay == two[key].weight_decay
    rows = {name: figure2.read_csv(tmp_path / name / figure2.POINTS_FILE) for name in ("one", "two")}
    order = lambda r: (r["method"], r["module"], r["step"])  # noqa: E731
    first, second = (sorted(rows[name], key=order) for name in ("one", "two"))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert order(a) == order(b)
        assert a["delta_m"] == pytest.approx(b["delta_m"], rel=1e-4, abs=1e-9)
        assert a["delta_d"] == pytest.approx(b["delta_d"], rel=1e-4, abs=1e-12)
    assert (tmp_path / "two" / figure2.ROBUSTNESS_FILE).exists()
    assert figure2.run_study(tmp_path / "two", conditions, jobs=2, **sizes).keys() == two.keys()  # resumes: nothing to do


def test_a_run_at_chance_counts_as_collapsed():
    assert figure2.collapsed_to_chance({"test_accuracy": 0.5})
    assert not figure2.collapsed_to_chance({"test_accuracy": 0.841})
