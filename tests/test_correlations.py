"""Correlations of nested ΔM/ΔD points: Spearman, within-checkpoint, per-layer, and the layer bootstrap."""

import numpy as np
import pytest

from lowrank.magnitude_direction import (
    STATISTICS,
    MagnitudeDirectionPoint,
    _percentile_interval,
    correlation_summary,
    layer_bootstrap_samples,
    pooled_correlation,
    spearman,
    within_checkpoint_correlation,
)


def panel(seed=3, layers=6, steps=(1, 2, 3, 4), layer_effect=0.1):
    rng = np.random.default_rng(seed)
    return [MagnitudeDirectionPoint("FT", f"m.layer.{l}.q_lin", l, s, float(rng.random() + layer_effect * l + s),
                                    float(rng.random() + s))
            for l in range(layers) for s in steps]


def test_spearman_averages_ties_and_is_rank_invariant():
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_within_checkpoints_removes_the_shared_time_trend():
    # Across layers ΔM falls as ΔD rises; both grow with the step: pooled positive, within negative.
    points = [MagnitudeDirectionPoint("FT", f"m.layer.{l}.q_lin", l, s, 10 * s - l, 10 * s + l)
              for l in range(4) for s in (1, 2, 3)]
    assert pooled_correlation(points) > 0.9
    assert within_checkpoint_correlation(points) == pytest.approx(-1.0)
    assert within_checkpoint_correlation(points, "spearman") == pytest.approx(-1.0)


def test_array_path_equals_the_point_by_point_path():
    points = panel()
    fast = correlation_summary(points, samples=300)
    slow: dict = {}
    for sample in layer_bootstrap_samples(points, 300, 0):
        for name, statistic in STATISTICS.items():
            for kind in ("pearson", "spearman"):
                slow.setdefault((name, kind), []).append(statistic(sample, kind))
    for c in fast:
        assert c.value == pytest.approx(STATISTICS[c.statistic](points, c.kind))
        assert (c.low, c.high) == pytest.approx(_percentile_interval(slow[(c.statistic, c.kind)], 0.95))


def test_incomplete_panels_fall_back_to_the_point_by_point_path():
    points = panel()[:-1]  # one layer misses its last checkpoint
    summary = {(c.statistic, c.kind): c for c in correlation_summary(points, samples=200)}
    c = summary[("pooled", "pearson")]
    assert c.low <= c.value <= c.high


def test_layer_bootstrap_keeps_layers_whole():
    points = panel()
    for sample in layer_bootstrap_samples(points, 20, 1):
        modules = {p.module for p in sample}
        assert len(sample) == len(points) and len(modules) == 6
        assert all(sum(p.module == m for p in sample) == 4 for m in modules)
