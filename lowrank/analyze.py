"""Magnitude/direction analysis of your own checkpoints: ``python -m lowrank.analyze``.

Compares one or more fine-tuned checkpoints with their base model, module by module, and
writes the DoRA paper's ΔM-versus-ΔD figure and a CSV of the points. A checkpoint is either

* a full-weight Hugging Face folder (``config.json`` + weights), or
* a PEFT adapter folder (``adapter_config.json``; LoRA or DoRA), merged into the base on load.

Example::

    python -m lowrank.analyze --base distilbert-base-uncased --modules 'q_lin$' \\
        --checkpoint run/checkpoint-500 run/checkpoint-1000 --out analysis/
"""

from __future__ import annotations

import argparse
import copy
import csv
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lowrank.adapters import linear_suffixes
from lowrank.backbone import EMBEDDED, load_backbone
from lowrank.magnitude_direction import (
    ChangePoint,
    change_points,
    merged_linear_weights,
    pearson,
    plot_change_points,
    points_as_rows,
)


def load_model(name: str | Path) -> nn.Module:
    """A model to compare: ``embedded``, a hub name or a local folder (weights only; no tokenizer needed)."""
    if str(name) == EMBEDDED:
        return load_backbone(EMBEDDED)[0]
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(str(name)).eval()
    except (OSError, ValueError) as error:
        raise ValueError(f"could not load model {str(name)!r}: not a model folder, and the hub could not "
                         f"provide it ({type(error).__name__}: {str(error).splitlines()[0]})") from error


def checkpoint_weights(base: nn.Module, folder: str | Path, pattern: str) -> dict[str, torch.Tensor]:
    """Merged weights of the matching modules of one checkpoint (full weights or a PEFT adapter)."""
    path = Path(folder)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        try:
            adapted = PeftModel.from_pretrained(copy.deepcopy(base), str(path))
        except Exception as error:  # PEFT raises many types for a mismatched adapter
            raise ValueError(f"could not apply the PEFT adapter {str(path)!r} to the base model: {error}") from error
        return merged_linear_weights(adapted.merge_and_unload(), pattern)
    if path.exists() and not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is neither a model folder (config.json) nor a PEFT adapter (adapter_config.json)")
    return merged_linear_weights(load_model(path), pattern)


def analyze_checkpoints(
    base: str | Path,
    checkpoints: Sequence[str | Path],
    pattern: str,
    steps: Sequence[int] | None = None,
    label: str = "fine-tuned",
) -> list[ChangePoint]:
    """ΔM/ΔD points of every module matching ``pattern`` in every checkpoint against ``base``.

    Raises ``ValueError`` when ``pattern`` matches no linear layer of the base, a checkpoint lacks
    one of the matched modules, or a shape differs (naming the module and both shapes).
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    if steps is not None and len(steps) != len(checkpoints):
        raise ValueError(f"{len(steps)} steps given for {len(checkpoints)} checkpoints")
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"--modules {pattern!r} is not a regular expression: {error}") from error
    base_model = load_model(base)
    reference = merged_linear_weights(base_model, pattern)
    if not reference:
        raise ValueError(f"--modules {pattern!r} matches no linear layer of the base; its linear layers end with: "
                         + ", ".join(linear_suffixes(base_model)))
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    for index, folder in enumerate(checkpoints):
        weights = checkpoint_weights(base_model, folder, pattern)
        for name, tensor in reference.items():
            if name not in weights:
                raise ValueError(f"checkpoint {str(folder)!r} has no module {name!r} (matched in the base)")
            if weights[name].shape != tensor.shape:
                raise ValueError(f"checkpoint {str(folder)!r}: {name} has shape {tuple(weights[name].shape)}, "
                                 f"the base has {tuple(tensor.shape)}")
        snapshots[steps[index] if steps is not None else index + 1] = {n: weights[n] for n in reference}
    return change_points(label, snapshots, reference)


def write_outputs(points: Sequence[ChangePoint], out: Path, title: str) -> tuple[Path, Path]:
    """Write ``points.csv`` and ``dm_dd.png`` into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table = out / "points.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "module", "layer", "step", "delta_m", "delta_d"])
        writer.writeheader()
        writer.writerows(points_as_rows(points))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    _, handles = plot_change_points(points, ax=ax, title=title)
    ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    image = out / "dm_dd.png"
    fig.savefig(image, dpi=120)
    plt.close(fig)
    return table, image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowrank.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base model: 'embedded', a hub name or a local folder")
    parser.add_argument("--checkpoint", nargs="+", required=True, help="fine-tuned folders (full weights or PEFT adapters)")
    parser.add_argument("--modules", default=r"q_lin$", help="regex for module names (default: %(default)s)")
    parser.add_argument("--steps", nargs="+", type=int, help="training step of each checkpoint (default 1, 2, ...)")
    parser.add_argument("--label", default="fine-tuned", help="method name for the title and CSV")
    parser.add_argument("--out", default="analysis", type=Path, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        points = analyze_checkpoints(args.base, args.checkpoint, args.modules, args.steps, args.label)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table, image = write_outputs(points, args.out, args.label)
    r = pearson([p.delta_d for p in points], [p.delta_m for p in points])
    print(f"{len(points)} points, Pearson r(ΔD, ΔM) = {r:+.3f}\nwrote {table}\nwrote {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
