"""Train each run once: a run that another notebook (or an earlier session) already trained with the same settings,
from the same starting weights, on the same data, is loaded instead of trained again.

:func:`train_once` takes :func:`lowrank.training.train`'s arguments. It computes a key from everything that decides
the result, looks for a finished run under that key in :func:`lowrank.settings.run_cache_folder` (``build/run_cache/``
unless ``$LOWRANK_RUN_CACHE`` says otherwise; ``off`` turns reuse off), and either loads the trained weights into the
model and returns the run's saved :class:`~lowrank.training.TrainResult`, or trains and saves. So every notebook still
runs alone (it trains what it does not find), and a notebook that repeats an earlier notebook's run shows that run's
losses, evaluations and snapshots without spending its time.

The key covers: every parameter and buffer of the model as it is handed over (so the random draw of LoRA's ``A``
counts, and a model that was already trained never matches an untrained one), which parameters train, the training
and evaluation data (token ids and labels), every argument of ``train`` that changes the maths, and the source of the
``lowrank`` package and the torch version (so a change to the training code never reuses a stale run). Arguments that
only change what is shown (``progress``, ``description``) are left out. A ``snapshot`` function cannot be compared, so
a run with snapshots also needs ``snapshot_key``: a string that names what the function stores (e.g. the pattern
passed to :func:`~lowrank.magnitude_direction.merged_linear_weights`).

A run that is interrupted (Ctrl-C) is not saved. Entries are written whole or not at all
(:func:`lowrank.adapter_files.atomic.replace_file`), so two processes that train the same run at once (two notebooks
at a time, test workers) both finish with a complete file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .settings import run_cache_folder
from .timing import add_phase_seconds, record_run
from . import training
from .training import TrainResult, train

#: Bump when the layout of a saved entry changes: older entries are then ignored.
ENTRY_FORMAT = 1
#: ``train`` arguments that change only what is displayed, not what is trained.
DISPLAY_ONLY = ("progress", "description")


def _source_digest() -> str:
    """The ``lowrank`` package's source files, hashed: a change to any of them makes every earlier entry stale."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _update_with_tensors(digest: Any, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    for name, tensor in named:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def _data_digest(data: Any) -> str:
    if data is None:
        return "none"
    rows = data.select_columns(["input_ids", "label"]).to_list()
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def run_key(model: nn.Module, train_data: Any, eval_data: Any = None, **train_kwargs: Any) -> str:
    """The key :func:`train_once` files a run under (see the module's docstring for what it covers).

    Raises:
        ValueError: ``snapshot`` given without ``snapshot_key``.
        TypeError: an ``optimizer`` object (an optimizer the caller built holds state the key cannot see; a list of
            parameter groups is keyed by its learning rates and the parameters' names).
    """
    snapshot_key = train_kwargs.pop("snapshot_key", None)
    # train's defaults filled in, so that passing a default explicitly (weight_decay=0.01) keys the same run
    bound = inspect.signature(training.train).bind(model, train_data, eval_data, **train_kwargs)
    bound.apply_defaults()
    kwargs = {k: v for k, v in bound.arguments.items()
              if k not in DISPLAY_ONLY + ("model", "train_data", "eval_data")}
    snapshot = kwargs.pop("snapshot", None)
    if snapshot is not None and snapshot_key is None:
        raise ValueError("a run with a snapshot function needs snapshot_key: a string naming what it stores, "
                         "e.g. the pattern given to merged_linear_weights")
    optimizer = kwargs.pop("optimizer", None)
    if optimizer is not None and not isinstance(optimizer, (list, tuple)):
        raise TypeError("train_once cannot key a run whose optimizer was built beforehand; pass parameter groups "
                        "(a list of dicts) or call lowrank.train directly")
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{k: (sorted(names[id(p)] for p in v) if k == "params" else v) for k, v in group.items()}
              for group in optimizer or ()]
    digest = hashlib.sha256()
    described = {"format": ENTRY_FORMAT, "torch": torch.__version__, "lowrank": _source_digest(),
                 "model": type(model).__name__,
                 "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
                 "train_data": _data_digest(train_data), "eval_data": _data_digest(eval_data),
                 "snapshot_key": snapshot_key, "optimizer_groups": groups,
                 "arguments": {k: repr(v) for k, v in sorted(kwargs.items())}}
    digest.update(json.dumps(described, sort_keys=True, default=repr).encode())
    _update_with_tensors(digest, model.state_dict(keep_vars=False).items())
    return digest.hexdigest()[:24]


def train_once(model: nn.Module, train_data: Any, eval_data: Any = None, *, snapshot_key: str | None = None,
               cache: Path | str | None | bool = True, **train_kwargs: Any) -> TrainResult:
    """:func:`lowrank.training.train`, or the saved result of the identical run trained before.

    Args:
        model, train_data, eval_data, train_kwargs: as for :func:`~lowrank.training.train`.
        snapshot_key: required with ``snapshot``: a string naming what the snapshot function stores.
        cache: ``True`` (the default): :func:`lowrank.settings.run_cache_folder`; a folder; ``False`` or ``None``:
            train, save nothing.

    Returns the run's :class:`~lowrank.training.TrainResult` (on reuse, the saved one: its losses, evaluations,
    snapshots and the step times of the run when it trained). On reuse the model's trainable parameters are set to
    the trained ones and the model is left in eval mode, as ``train`` leaves it; one printed line says so.
    """
    folder = run_cache_folder() if cache is True else (Path(cache) if cache else None)
    description = str(train_kwargs.get("description", "training"))
    if folder is None:
        return train(model, train_data, eval_data, **train_kwargs)
    key = run_key(model, train_data, eval_data, snapshot_key=snapshot_key, **train_kwargs)
    path = folder / f"{key}.pt"
    if path.exists():
        started = time.perf_counter()
        entry = torch.load(path, map_location="cpu", weights_only=True)
        trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
        if entry.get("format") == ENTRY_FORMAT and set(entry["trainable"]) == set(trainable):
            with torch.no_grad():
                for name, parameter in trainable.items():
                    parameter.copy_(entry["trainable"][name].to(parameter.device))
            model.eval()
            result = TrainResult(**entry["result"])
            loaded = time.perf_counter() - started
            add_phase_seconds("load cached run", loaded)
            record_run(description, result.steps, loaded, reused=True)
            print(f"{description}: reused the identical run trained earlier as {entry['description']!r} "
                  f"({result.steps} steps, {sum(result.step_seconds):.0f} s of training then; "
                  f"{path.parent.name}/{path.name}; LOWRANK_RUN_CACHE=off trains it again)")
            return result
    result = train(model, train_data, eval_data, **train_kwargs)
    entry = {"format": ENTRY_FORMAT, "description": description,
             "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
             "result": dataclasses.asdict(result)}
    from .adapter_files.atomic import replace_file

    replace_file(path, lambda staged: torch.save(entry, staged))
    return result
