"""What the analysis writes: ``points.csv`` rows (:class:`RunPoint`), correlations, and the figure.

Shared by the command (:mod:`lowrank.analysis.command`) and the Trainer callback (:mod:`lowrank.analysis.callback`).
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lowrank.magnitude_direction import (
    Correlation,
    MagnitudeDirectionPoint,
    correlation_summary,
    plot_points,
    point_columns,
    write_points_csv,
)

#: The modules analysed by default: the query projection under its common names.
DEFAULT_MODULES = r"(q_proj|q_lin|query)$"

@dataclass(frozen=True)
class RunPoint:
    """One row of ``points.csv``: one weight matrix of one run at one step."""

    run: str
    method: str  # full, lora or dora: how the checkpoint stores this matrix
    module: str
    layer: int | None
    step: int
    delta_m: float
    delta_d: float

    def as_point(self) -> MagnitudeDirectionPoint:
        """As a :class:`~lowrank.magnitude_direction.MagnitudeDirectionPoint` (its ``method`` is the run), for
        statistics and plots."""
        return MagnitudeDirectionPoint(self.run, self.module, self.layer, self.step, self.delta_m, self.delta_d)


# ---------------------------------------------------------------------------------------------
# Outputs: CSV, correlations, the figure


def runs_of(points: Sequence[RunPoint]) -> dict[str, list[MagnitudeDirectionPoint]]:
    """Change points per run, in order of first appearance."""
    out: dict[str, list[MagnitudeDirectionPoint]] = {}
    for point in points:
        out.setdefault(point.run, []).append(point.as_point())
    return out


def correlation_rows(points: Sequence[RunPoint], samples: int = 2000) -> list[dict]:
    """Every statistic of :func:`~lowrank.magnitude_direction.correlation_summary`, per run."""
    rows = []
    for run, members in runs_of(points).items():
        for c in correlation_summary(members, samples=samples):
            rows.append({"run": run, **asdict(c)})
    return rows


def correlation_report(rows: Sequence[dict]) -> str:
    """The correlations as a table: Pearson and Spearman, each with its 95 % layer-bootstrap interval."""
    def cell(row: dict) -> str:
        if math.isnan(row["value"]):
            return "n/a"
        interval = "" if math.isnan(row["low"]) else f" [{row['low']:+.2f}, {row['high']:+.2f}]"
        return f"{row['value']:+.2f}{interval}"

    lines = [f"{'run':<12} {'statistic':<20} {'Pearson r [95 % interval]':<28} Spearman ρ [95 % interval]"]
    by_key = {(r["run"], r["statistic"], r["kind"]): r for r in rows}
    for run, statistic in dict.fromkeys((r["run"], r["statistic"]) for r in rows):
        lines.append(f"{run:<12} {statistic:<20} {cell(by_key[run, statistic, 'pearson']):<28} "
                     f"{cell(by_key[run, statistic, 'spearman'])}")
    return "\n".join(lines)


def plot_runs(points: Sequence[RunPoint]):
    """One Figure-2 panel per run (ΔD against ΔM, colour = layer, marker = checkpoint), one shared legend."""
    import matplotlib.pyplot as plt

    runs = runs_of(points)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1.2, 3.9), squeeze=False)
    handles_by_run = []
    for ax, (run, members) in zip(axes[0], runs.items()):
        _, handles = plot_points(members, ax=ax, title=run)
        handles_by_run.append(handles)
    steps = [sorted({p.step for p in members}) for members in runs.values()]
    layers = [sorted({p.layer for p in members if p.layer is not None}) for members in runs.values()]
    if all(l == layers[0] for l in layers):
        handles = max(handles_by_run, key=len)
        if any(s != steps[0] for s in steps):  # markers mean "k-th checkpoint of its run" in every panel
            handles = [h for h in handles if not h.get_label().startswith("step ")]
            longest = max(handles_by_run, key=lambda hs: sum(h.get_label().startswith("step ") for h in hs))
            for k, h in enumerate(h for h in longest if h.get_label().startswith("step ")):
                h.set_label(f"checkpoint {k + 1}")
                handles.append(h)
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, 1 - 1.15 / fig.get_figwidth(), 1))
    else:  # layer colours differ between panels: a legend each
        for ax, handles in zip(axes[0], handles_by_run):
            ax.legend(handles=handles, fontsize=6, loc="best")
        fig.tight_layout()
    return fig


def write_outputs(points: Sequence[RunPoint], out: Path, formats: Sequence[str] = ("png", "pdf"),
                  samples: int = 2000) -> tuple[list[Path], str]:
    """Write ``points.csv``, ``correlations.csv`` and ``dm_dd.<format>`` into ``out``; return the paths and the
    correlation table."""
    import matplotlib

    if not points:
        raise ValueError("no points to write")
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:  # a command: no display needed
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "points.csv", out / "correlations.csv"]
    write_points_csv(written[0], points, RunPoint)
    rows = correlation_rows(points, samples)
    _write_csv(written[1], rows, ["run", *point_columns(Correlation)])
    fig = plot_runs(points)
    for extension in formats:
        written.append(out / f"dm_dd.{extension}")
        fig.savefig(written[-1], dpi=150)
    plt.close(fig)
    return written, correlation_report(rows)


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
