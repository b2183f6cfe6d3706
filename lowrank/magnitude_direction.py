"""The DoRA paper's weight-change analysis: magnitude change ΔM versus direction change ΔD.

Taught in notebook 04: section 1 (ΔM and ΔD), section 3 (the figure), section 4 (the correlations and
their layer-bootstrap intervals); notebook 05 (why the slope turns negative) reads the study with it.

For a weight ``W_t`` (merged, ``[out, in]``) and its pretrained ``W_0`` the paper's eq. 3-4,
with its "columns" being output features = rows of ``nn.Linear.weight``:

    ΔM = mean_n | ||W_t[n]|| - ||W_0[n]|| |,      ΔD = mean_n (1 - cos(W_t[n], W_0[n])).
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lowrank.lora import LoRALinear


#: A zero row counts as cosine 0, as in ``torch.nn.functional.cosine_similarity``.
COSINE_EPS = 1e-8


def deltas_from_row_sums(norm0_square: torch.Tensor, square: torch.Tensor, dot: torch.Tensor) -> tuple[float, float]:
    """``(ΔM, ΔD)`` from three numbers per output row: ``||W_0[n]||²``, ``||W_t[n]||²`` and ``<W_t[n], W_0[n]>``.

    The one place the paper's eq. 3-4 are computed: :func:`magnitude_direction_change` for matrices in
    memory, :func:`lowrank.analysis.row_changes.magnitude_direction_changes` for sums streamed in row blocks.
    """
    norm0, norm = norm0_square.sqrt(), square.sqrt()
    delta_m = (norm - norm0).abs().mean().item()
    delta_d = (1 - dot / (norm.clamp_min(COSINE_EPS) * norm0.clamp_min(COSINE_EPS))).mean().item()
    return delta_m, delta_d


def magnitude_direction_change(weight: torch.Tensor, pretrained: torch.Tensor) -> tuple[float, float]:
    """``(ΔM, ΔD)`` of ``weight`` against ``pretrained``, both ``[out, in]``, over output rows (in float64)."""
    if weight.shape != pretrained.shape or weight.dim() != 2:
        raise ValueError(f"need two [out, in] matrices of one shape, got {tuple(weight.shape)} and {tuple(pretrained.shape)}")
    w, w0 = weight.detach().double(), pretrained.detach().double()
    return deltas_from_row_sums((w0 * w0).sum(1), (w * w).sum(1), (w * w0).sum(1))


def merged_linear_weights(model: nn.Module, pattern: str) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the effective weight of every linear layer whose name matches.

    ``pattern`` is a regular expression searched in each qualified module name (e.g.
    ``r"\\.q_lin$"``); adapter layers give their ``merged_weight()``, plain layers their weight.
    """
    regex = re.compile(pattern)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not regex.search(name):
                continue
            if isinstance(module, LoRALinear):
                out[name] = module.merged_weight().detach().float().cpu().clone()
            elif isinstance(module, nn.Linear) and not _inside_adapter(model, name):
                out[name] = module.weight.detach().float().cpu().clone()
    return out


def _inside_adapter(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), LoRALinear) for i in range(1, len(parts)))


def layer_index(name: str) -> int | None:
    """The transformer block number in a module name (``...layer.3.attention.q_lin`` → 3)."""
    found = re.search(r"\.(?:layer|layers|h|block)\.(\d+)\.", "." + name + ".")
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class MagnitudeDirectionPoint:
    """One (ΔD, ΔM) point: a module of one run at one training step."""

    method: str
    module: str
    layer: int | None
    step: int
    delta_m: float
    delta_d: float


def magnitude_direction_points(
    method: str,
    snapshots: Mapping[int, Mapping[str, torch.Tensor]],
    pretrained: Mapping[str, torch.Tensor],
) -> list[MagnitudeDirectionPoint]:
    """ΔM/ΔD of every snapshotted module at every step against its pretrained weight."""
    points = []
    for step in sorted(snapshots):
        for module, weight in snapshots[step].items():
            if module not in pretrained:
                raise ValueError(f"module {module!r} of step {step} has no pretrained weight")
            delta_m, delta_d = magnitude_direction_change(weight, pretrained[module])
            points.append(MagnitudeDirectionPoint(method, module, layer_index(module), step, delta_m, delta_d))
    return points


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient (nan for fewer than 3 points or no spread)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values), float)
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson's of the ranks (ties averaged); nan as :func:`pearson`."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return float("nan")
    return pearson(_ranks(x), _ranks(y))


CORRELATIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {"pearson": pearson, "spearman": spearman}


def _percentile_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _cluster(point: MagnitudeDirectionPoint) -> str:
    """What a point is nested in: its layer (or, without a layer number, its module)."""
    return str(point.layer) if point.layer is not None else point.module


def pooled_correlation(points: Sequence[MagnitudeDirectionPoint], kind: str = "pearson") -> float:
    """Correlation of ΔD with ΔM over all points (the paper's Figure 2 number)."""
    return CORRELATIONS[kind]([p.delta_d for p in points], [p.delta_m for p in points])


def within_checkpoint_correlation(points: Sequence[MagnitudeDirectionPoint], kind: str = "pearson") -> float:
    """Correlation across layers with the shared time trend removed.

    Pearson: subtract each checkpoint's mean ΔD and ΔM, then correlate all residuals.
    Spearman: rank ΔD and ΔM within each checkpoint, then correlate all within-checkpoint ranks.
    """
    x: list[float] = []
    y: list[float] = []
    for step in sorted({p.step for p in points}):
        chosen = [p for p in points if p.step == step]
        d = np.array([p.delta_d for p in chosen])
        m = np.array([p.delta_m for p in chosen])
        if kind == "spearman":
            d, m = _ranks(d), _ranks(m)
        x += list(d - d.mean())
        y += list(m - m.mean())
    return pearson(x, y)


def per_layer_correlation(points: Sequence[MagnitudeDirectionPoint], kind: str = "pearson") -> float:
    """Mean over layers of each layer's correlation over its checkpoints (how one layer moves in time)."""
    values = []
    for cluster in sorted({_cluster(p) for p in points}):
        chosen = [p for p in points if _cluster(p) == cluster]
        values.append(CORRELATIONS[kind]([p.delta_d for p in chosen], [p.delta_m for p in chosen]))
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


STATISTICS: dict[str, Callable[[Sequence[MagnitudeDirectionPoint], str], float]] = {
    "pooled": pooled_correlation,
    "within checkpoints": within_checkpoint_correlation,
    "per layer": per_layer_correlation,
}


def layer_draws(layers: int, samples: int = 2000, seed: int = 0) -> np.ndarray:
    """The layer bootstrap's draws: ``[samples, layers]`` indices into the sorted layers, with replacement.

    The points of one layer at several checkpoints are nested, not independent, so a draw picks whole
    layers (a cluster bootstrap). The one place the resampling is decided: both ways of computing the
    resampled statistics (:func:`correlation_summary`) read these draws.
    """
    return np.random.default_rng(seed).integers(0, layers, (samples, layers))


def layer_bootstrap_samples(points: Sequence[MagnitudeDirectionPoint], samples: int = 2000, seed: int = 0):
    """Yield ``samples`` resampled panels, one per row of :func:`layer_draws`, each keeping every checkpoint
    of each drawn layer. A layer drawn twice enters as two distinct layers (so per-layer statistics see both).
    """
    clusters = sorted({_cluster(p) for p in points})
    members = {c: [p for p in points if _cluster(p) == c] for c in clusters}
    copies = {}  # (cluster, position in the draw) -> relabelled points, built once
    for drawn in layer_draws(len(clusters), samples, seed):
        sample = []
        for i, c in enumerate(drawn):
            key = (int(c), i)
            if key not in copies:
                copies[key] = [replace(p, module=f"{p.module}#{i}", layer=None) for p in members[clusters[c]]]
            sample += copies[key]
        yield sample


@dataclass(frozen=True)
class Correlation:
    """One correlation of a panel of points, with its layer-bootstrap interval."""

    statistic: str
    kind: str
    value: float
    low: float
    high: float


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (0-based, ties averaged) along the last axis, for many rows at once."""
    less = (x[..., :, None] > x[..., None, :]).sum(-1)
    equal = (x[..., :, None] == x[..., None, :]).sum(-1)
    return less + (equal - 1) / 2


def _row_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (nan for fewer than 3 values or no spread)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    spread = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(spread > 0, (x * y).sum(-1) / np.where(spread > 0, spread, 1), np.nan)
    return out if x.shape[-1] >= 3 else np.full(out.shape, np.nan)


def _panel_grid(points: Sequence[MagnitudeDirectionPoint]) -> tuple[np.ndarray, np.ndarray] | None:
    """ΔD and ΔM as ``[layers, checkpoints]`` arrays when every layer has every checkpoint once."""
    clusters = sorted({_cluster(p) for p in points})
    steps = sorted({p.step for p in points})
    if len(points) != len(clusters) * len(steps):
        return None
    dd = np.full((len(clusters), len(steps)), np.nan)
    dm = np.full_like(dd, np.nan)
    for p in points:
        i, j = clusters.index(_cluster(p)), steps.index(p.step)
        dd[i, j], dm[i, j] = p.delta_d, p.delta_m
    return (dd, dm) if not np.isnan(dd).any() else None


def _grid_statistics(dd: np.ndarray, dm: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    """Every statistic of :data:`STATISTICS` × kind for a batch of panels ``[batch, layers, checkpoints]``."""
    batch = dd.shape[0]
    flat_d, flat_m = dd.reshape(batch, -1), dm.reshape(batch, -1)
    out = {("pooled", "pearson"): _row_correlations(flat_d, flat_m),
           ("pooled", "spearman"): _row_correlations(_average_ranks(flat_d), _average_ranks(flat_m))}
    for kind, transform in (("pearson", lambda a: a), ("spearman", lambda a: np.swapaxes(
            _average_ranks(np.swapaxes(a, 1, 2)), 1, 2))):
        d, m = transform(dd), transform(dm)
        d, m = d - d.mean(1, keepdims=True), m - m.mean(1, keepdims=True)
        out[("within checkpoints", kind)] = _row_correlations(d.reshape(batch, -1), m.reshape(batch, -1))
        per_layer = _row_correlations(_average_ranks(dd), _average_ranks(dm)) if kind == "spearman" \
            else _row_correlations(dd, dm)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[("per layer", kind)] = np.nanmean(per_layer, axis=1)
    return out


def correlation_summary(
    points: Sequence[MagnitudeDirectionPoint], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> list[Correlation]:
    """Every statistic of :data:`STATISTICS` × Pearson/Spearman, with layer-bootstrap intervals
    (one set of resampled panels shared by all of them).

    When every layer has every checkpoint (the usual panel), the resampled panels are computed
    as arrays, thousands at a time; otherwise one by one from :func:`layer_bootstrap_samples`.
    """
    names = [(name, kind) for name in STATISTICS for kind in CORRELATIONS]
    draws: dict[tuple[str, str], list[float]] = {key: [] for key in names}
    clusters = sorted({_cluster(p) for p in points})
    grid = _panel_grid(points)
    if len(clusters) >= 2 and grid is not None:
        dd, dm = grid
        index = layer_draws(len(clusters), samples, seed)
        for key, values in _grid_statistics(dd[index], dm[index]).items():
            draws[key] = list(values)
    elif len(clusters) >= 2:
        for sample in layer_bootstrap_samples(points, samples, seed):
            for name, kind in names:
                draws[(name, kind)].append(STATISTICS[name](sample, kind))
    out = []
    for name, kind in names:
        low, high = _percentile_interval(draws[(name, kind)], level)
        out.append(Correlation(name, kind, STATISTICS[name](points, kind), low, high))
    return out


def plot_points(points: Sequence[MagnitudeDirectionPoint], ax=None, title: str | None = None):
    """Scatter ΔD (x) against ΔM (y): a colour per layer, a marker per step, a fitted line.

    The title gives the Pearson correlation of all the points ("Pearson r"), as the DoRA paper's Figure 2 gives
    one correlation per panel.
    """
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no points to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    layers = sorted({p.layer if p.layer is not None else -1 for p in points})
    steps = sorted({p.step for p in points})
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    colours = plt.get_cmap("tab10")
    for point in points:
        layer = point.layer if point.layer is not None else -1
        ax.scatter(point.delta_d, point.delta_m, color=colours(layers.index(layer) % 10),
                   marker=markers[steps.index(point.step) % len(markers)], s=36, edgecolors="black", linewidths=0.4)
    x = np.array([p.delta_d for p in points])
    y = np.array([p.delta_m for p in points])
    r = pearson(x, y)
    if not np.isnan(r):
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(grid, slope * grid + intercept, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("ΔD (direction change)")
    ax.set_ylabel("ΔM (magnitude change)")
    ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    ax.set_title(f"{title or points[0].method}: Pearson r = {r:+.2f}")
    handles = [plt.Line2D([], [], color=colours(i % 10), marker="o", linestyle="", label=f"layer {l}")
               for i, l in enumerate(layers) if l >= 0]
    handles += [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], linestyle="", label=f"step {s}")
                for i, s in enumerate(steps)]
    return ax, handles


def point_columns(point_type: type = MagnitudeDirectionPoint) -> list[str]:
    """The CSV columns of a point dataclass: its field names, in order."""
    return [f.name for f in fields(point_type)]


def write_points_csv(path: str | Path, points: Iterable, point_type: type = MagnitudeDirectionPoint) -> Path:
    """Write ``points`` (instances of the dataclass ``point_type``) as CSV, one column per field
    (:func:`point_columns`), and return the path. ``python -m lowrank.analyze`` writes its
    :class:`~lowrank.analyze.RunPoint` rows with it, notebook 04 its points."""
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=point_columns(point_type))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    return path
