"""The DoRA paper's Figure 2 for your own runs: ``python -m lowrank.analyze``.

Taught in notebook A3 (in_practice), "Figure 2 for your own checkpoints".

Compares checkpoints with their base model, weight matrix by weight matrix, reading only the
tensors that ``--modules`` selects, straight from safetensors files, one block of rows at a time
(:mod:`lowrank.analysis.streaming`, :mod:`lowrank.analysis.row_changes`): no model class is built, so any
architecture works and memory stays flat whatever the model's size. A checkpoint is a full-weight
folder (single file or shards), a PEFT LoRA/DoRA adapter or a :func:`lowrank.save_adapters`
folder, the adapters analysed from their factors (:mod:`lowrank.analysis.checkpoints`); a 🤗 Trainer
``output_dir`` gives its ``checkpoint-N`` folders. Examples::

    python -m lowrank.analyze --run ft=runs/ft lora=runs/lora dora=runs/dora \\
        --base meta-llama/Llama-2-7b-hf --modules 'q_proj$' --out analysis/
    python -m lowrank.analyze --base embedded --modules 'q_lin$' \\
        --checkpoint run/checkpoint-500 run/checkpoint-1000 --steps 500 1000

It writes ``points.csv`` (run, method, module, layer, step, delta_m, delta_d), ``correlations.csv``
and the figure ``dm_dd.png`` / ``.pdf`` (one panel per run, one legend), and prints the pooled,
within-checkpoint and per-layer correlations with layer-bootstrap intervals.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lowrank.analysis.checkpoints import (
    Base,
    Checkpoint,
    align,
    base_rows,
    find_run,
    open_base,
    open_checkpoint,
    same_model,
    select_modules,
)
from lowrank.analysis.outputs import (  # noqa: F401 (also the command's public names)
    DEFAULT_MODULES,
    RunPoint,
    correlation_report,
    correlation_rows,
    plot_runs,
    runs_of,
    write_outputs,
)
from lowrank.analysis.row_changes import FullUpdate, magnitude_direction_changes
from lowrank.magnitude_direction import layer_index

#: A fine-tune keeps every row close in direction (the paper's largest ΔD is 0.32, DoRA's); a mean
#: 1 - cos above this says the checkpoint does not come from this base.
MAX_DIRECTION_CHANGE = 0.5


@dataclass(frozen=True)
class Run:
    """A labelled sequence of ``(step, checkpoint folder or hub name)``."""

    label: str
    checkpoints: tuple[tuple[int, str], ...]


def parse_run(text: str) -> Run:
    """``LABEL=DIR`` or ``DIR`` (labelled by its folder name): a Trainer ``output_dir`` and its checkpoints."""
    label, sep, folder = text.partition("=")
    if not sep or "/" in label or not label:
        label, folder = Path(text.rstrip("/")).name or text, text
    return Run(label, tuple((step, str(path)) for step, path in find_run(folder)))


def analyze_runs(
    runs: Sequence[Run],
    base: str | None = None,
    pattern: str = DEFAULT_MODULES,
    alpha: float | None = None,
    transposed: bool = False,
    any_base: bool = False,
    progress: bool = True,
) -> list[RunPoint]:
    """ΔM/ΔD of every matrix matching ``pattern`` in every checkpoint of every run.

    Args:
        runs: the runs; labels must differ.
        base: ``embedded``, a local folder or a hub name; by default, each run's adapter configuration's.
        pattern: regular expression searched in the base's module names (``...q_proj``, without ``.weight``).
        alpha: the LoRA alpha of ``lowrank`` adapter layers saved inside full (Trainer) checkpoints.
        transposed: the weights are stored ``[in, out]`` (GPT-2's ``Conv1D``); implied by PEFT's ``fan_in_fan_out``.
        any_base: skip the checks that a checkpoint comes from ``base`` (names in configurations, direction).

    Everything is checked (names, shapes, configurations) before the first matrix is read.
    Raises ``ValueError`` with a message naming what does not fit.
    """
    if not runs:
        raise ValueError("give at least one run or checkpoint")
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must differ, got {labels}; name them LABEL=DIR")
    opened = [(run.label, open_checkpoint(path, step, alpha)) for run in runs for step, path in run.checkpoints]
    groups: dict[str, list[tuple[str, Checkpoint]]] = {}
    for run in runs:
        checkpoints = [c for label, c in opened if label == run.label]
        groups.setdefault(_base_of(run.label, checkpoints, base, any_base), []).extend((run.label, c) for c in checkpoints)
    plans = []
    for base_name, members in groups.items():
        model = open_base(base_name)
        modules = select_modules(model, pattern)
        flipped = transposed or any(c.transposed for _, c in members)
        for _, checkpoint in members:
            _check_same_architecture(model, checkpoint, any_base)
        aliases = model.aliases()
        mappings = [_module_map(modules, checkpoint, aliases) for _, checkpoint in members]
        for (_, checkpoint), mapping in zip(members, mappings):
            for module, theirs in mapping.items():
                checkpoint.check(theirs, model.tensors.shape(modules[module]), flipped)
        plans.append((model, modules, members, mappings, flipped))
    from tqdm.auto import tqdm

    total = sum(len(modules) * len(members) for _, modules, members, _, _ in plans)
    points: list[RunPoint] = []
    with tqdm(total=total, desc="ΔM/ΔD", unit="matrix", disable=not progress, mininterval=1.0) as bar:
        for model, modules, members, mappings, flipped in plans:
            for module, weight in modules.items():
                updates = [c.update(m[module], model.tensors, weight) for (_, c), m in zip(members, mappings)]
                changes = magnitude_direction_changes(base_rows(model.tensors, weight), updates, flipped)
                for (label, checkpoint), update, (delta_m, delta_d) in zip(members, updates, changes):
                    if isinstance(update, FullUpdate) and delta_d > MAX_DIRECTION_CHANGE and not any_base:
                        raise ValueError(
                            f"checkpoint {checkpoint.source!r} does not look fine-tuned from the base {model.name!r}: "
                            f"the rows of {module} have mean cosine {1 - delta_d:.2f} to the base's (a fine-tune keeps "
                            "them near 1). Pass the right --base, or --any-base to analyse it anyway")
                    points.append(RunPoint(label, update.method, module, layer_index(module), checkpoint.step,
                                           delta_m, delta_d))
                bar.update(len(members))
            model.tensors.close()
            for _, checkpoint in members:
                checkpoint.tensors.close()
    return sorted(points, key=lambda p: (labels.index(p.run), p.step, -1 if p.layer is None else p.layer, p.module))


def analyze_checkpoints(
    base: str | None,
    checkpoints: Sequence[str | Path],
    pattern: str = DEFAULT_MODULES,
    steps: Sequence[int] | None = None,
    label: str = "fine-tuned",
    **options,
) -> list[RunPoint]:
    """:func:`analyze_runs` for one run given as checkpoint folders (steps 1, 2, ... unless given)."""
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    if steps is not None and len(steps) != len(checkpoints):
        raise ValueError(f"{len(steps)} steps given for {len(checkpoints)} checkpoints")
    steps = list(steps) if steps is not None else list(range(1, len(checkpoints) + 1))
    run = Run(label, tuple((step, str(path)) for step, path in zip(steps, checkpoints)))
    return analyze_runs([run], base, pattern, **options)


def _base_of(label: str, checkpoints: Sequence[Checkpoint], base: str | None, any_base: bool) -> str:
    """The base of one run: ``base`` if given (checked against the adapters' records), else theirs."""
    recorded = {c.base_name for c in checkpoints if c.base_name}
    if base is None:
        if not recorded:
            raise ValueError(f"run {label!r}: give --base; its checkpoints do not record a base model "
                             "(only adapter configurations do)")
        if len({name.lower() for name in recorded}) > 1:
            raise ValueError(f"run {label!r}: its checkpoints name different base models: {sorted(recorded)}")
        return sorted(recorded)[0]
    for checkpoint in checkpoints:
        name = checkpoint.base_name
        if name and not any_base and not same_model(name, str(base)):
            raise ValueError(f"checkpoint {checkpoint.source!r} was trained on {name!r}, not on --base {str(base)!r}; "
                             "pass that base, or --any-base if both name the same model")
    return str(base)


def _check_same_architecture(base: Base, checkpoint: Checkpoint, any_base: bool) -> None:
    theirs, mine = checkpoint.model_config, base.model_config
    if any_base or not theirs or not mine:
        return
    for key in ("model_type",):
        if key in theirs and key in mine and theirs[key] != mine[key]:
            raise ValueError(f"checkpoint {checkpoint.source!r} is a {key} {theirs[key]!r} model, the base "
                             f"{base.name!r} a {mine[key]!r} one")


def _module_map(modules: dict[str, str], checkpoint: Checkpoint, aliases: dict[str, str]) -> dict[str, str]:
    mapping = align(list(modules), checkpoint.modules)
    if len(mapping) < len(modules) and aliases:  # an adapter names modules as transformers' model does
        renamed = {aliases.get(m, m): m for m in modules}
        other = align(list(renamed), checkpoint.modules)
        if len(other) > len(mapping):
            mapping = {renamed[name]: theirs for name, theirs in other.items()}
    missing = [m for m in modules if m not in mapping]
    if missing:
        others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if checkpoint.kind == "full":
            raise ValueError(f"checkpoint {checkpoint.source!r} has no tensor {missing[0] + '.weight'!r}{others}, "
                             "matched in the base by --modules")
        adapted = sorted({m.rsplit(".", 1)[-1] for m, s in checkpoint.modules.items() if s.lora_A})
        raise ValueError(f"adapter {checkpoint.source!r} does not change {missing[0]!r}{others}, matched by --modules; "
                         f"narrow --modules to what it adapts (modules ending with: {', '.join(adapted)})")
    return mapping


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowrank.analyze", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", nargs="+", metavar="[LABEL=]DIR",
                        help="Trainer output_dir(s): their checkpoint-N folders, N the step; one panel per run")
    source.add_argument("--checkpoint", nargs="+", metavar="DIR",
                        help="checkpoint folders or hub names (full weights, PEFT or lowrank adapters)")
    parser.add_argument("--steps", nargs="+", type=int, help="with --checkpoint: the step of each (default 1, 2, ...)")
    parser.add_argument("--label", default="fine-tuned", help="with --checkpoint: the run's name (default: %(default)s)")
    parser.add_argument("--base", help="'embedded', a local folder or a hub name (default: what the adapters record)")
    parser.add_argument("--modules", default=DEFAULT_MODULES,
                        help="regex searched in module names, e.g. 'q_proj$' (default: %(default)s)")
    parser.add_argument("--alpha", type=float, help="LoRA alpha of lowrank adapter layers inside full checkpoints")
    parser.add_argument("--fan-in-fan-out", action="store_true",
                        help="weights are stored [in, out] (GPT-2's Conv1D): output features are columns")
    parser.add_argument("--any-base", action="store_true", help="skip the checks that checkpoints come from --base")
    parser.add_argument("--out", default="analysis", type=Path, help="output folder (default: %(default)s)")
    parser.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"],
                        help="figure formats (default: png pdf)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap samples per interval (default 2000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps and not args.checkpoint:
        parser.error("--steps goes with --checkpoint (a --run takes steps from checkpoint-N)")
    options = dict(alpha=args.alpha, transposed=args.fan_in_fan_out, any_base=args.any_base,
                   progress=not args.no_progress)
    try:
        if args.run:
            points = analyze_runs([parse_run(text) for text in args.run], args.base, args.modules, **options)
        else:
            points = analyze_checkpoints(args.base, args.checkpoint, args.modules, args.steps, args.label, **options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    written, report = write_outputs(points, args.out, args.formats, args.bootstrap)
    matrices = len({(p.run, p.module) for p in points})
    print(f"{len(points)} points ({matrices} matrices × their checkpoints)\n{report}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
