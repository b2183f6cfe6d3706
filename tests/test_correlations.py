"""Correlations of nested ΔM/ΔD points: Spearman, within-checkpoint, per-layer, and the layer bootstrap."""

import numpy as np
import pytest

from lowrank.magnitude_direction import (
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


def _numpy_statistics(dd: np.ndarray, dm: np.ndarray) -> dict:
    """The six statistics of a ``[layers, checkpoints]`` panel, written out with NumPy (no ties in ``panel``)."""
    def r(x, y):
        return np.corrcoef(x, y)[0, 1]

    def ranks(x, axis):  # 0-based, ties (a layer drawn twice) given the mean of the places they share
        x = np.moveaxis(x, axis, -1)
        out = np.empty_like(x, dtype=float)
        for index in np.ndindex(x.shape[:-1]):
            row = x[index]
            order = np.argsort(row, kind="stable")
            places = np.empty(len(row))
            places[order] = np.arange(len(row))
            out[index] = [places[row == value].mean() for value in row]
        return np.moveaxis(out, -1, axis)

    out = {}
    for kind in ("pearson", "spearman"):
        flat_d, flat_m = dd.ravel(), dm.ravel()
        if kind == "spearman":
            flat_d, flat_m = ranks(flat_d, 0), ranks(flat_m, 0)
        out[("pooled", kind)] = r(flat_d, flat_m)
        within_d, within_m = (ranks(dd, 0), ranks(dm, 0)) if kind == "spearman" else (dd, dm)
        out[("within checkpoints", kind)] = r((within_d - within_d.mean(0)).ravel(), (within_m - within_m.mean(0)).ravel())
        layer_d, layer_m = (ranks(dd, 1), ranks(dm, 1)) if kind == "spearman" else (dd, dm)
        out[("per layer", kind)] = np.mean([r(x, y) for x, y in zip(layer_d, layer_m)])
    return out


def test_values_and_intervals_match_a_numpy_bootstrap():
    """Each statistic and its 95 % layer-bootstrap interval, recomputed with NumPy from the documented draws:
    ``default_rng(seed).integers(0, layers, (samples, layers))``, whole layers with replacement."""
    points = panel()
    layers, steps = 6, 4
    dd = np.array([[p.delta_d for p in points if p.layer == l] for l in range(layers)])
    dm = np.array([[p.delta_m for p in points if p.layer == l] for l in range(layers)])
    draws = np.random.default_rng(0).integers(0, layers, (300, layers))
    resampled = [_numpy_statistics(dd[index], dm[index]) for index in draws]
    assert dd.shape == (layers, steps)
    for c in correlation_summary(points, samples=300, seed=0):
        key = (c.statistic, c.kind)
        assert c.value == pytest.approx(_numpy_statistics(dd, dm)[key], abs=1e-12)
        values = [sample[key] for sample in resampled if not np.isnan(sample[key])]
        low, high = np.percentile(values, [2.5, 97.5])
        assert (c.low, c.high) == pytest.approx((low, high), abs=1e-12), key


def test_complete_and_incomplete_panels_resample_alike():
    """The point-by-point path (for incomplete panels) draws the same layers as the array path."""
    points = panel()
    by_points = [pooled_correlation(sample) for sample in layer_bootstrap_samples(points, 50, 0)]
    low, high = _percentile_interval(by_points, 0.95)
    summary = {(c.statistic, c.kind): c for c in correlation_summary(points, samples=50)}
    assert (summary[("pooled", "pearson")].low, summary[("pooled", "pearson")].high) == pytest.approx((low, high))


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
