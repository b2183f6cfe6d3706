"""Fair timing on a noisy machine (interleave the contenders, report medians), and where a run's time goes.

Used in notebook 01, section 5 (the latency of merged and unmerged layers), and by ``bench/step_bench.py``.

:func:`phase` adds the wall time of a block to a named total (training steps, evaluation,
tokenizing, ...); with ``$LOWRANK_PHASE_LOG`` set (:func:`lowrank.settings.phase_log_path`), the totals are written to that JSON file
after every phase, with :func:`record_run`'s list of training runs beside them, which is how
``tools/run_course.py`` breaks a notebook's time down, per phase and per training run.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import torch

from lowrank.settings import phase_log_path

_phase_seconds: defaultdict[str, float] = defaultdict(float)
_open_phases: list[str] = []
_runs: list[dict] = []
_P = ParamSpec("_P")
_R = TypeVar("_R")


def phase_seconds() -> dict[str, float]:
    """Wall seconds spent so far in each named phase of this process."""
    return dict(_phase_seconds)


def training_runs() -> list[dict]:
    """Each training run of this process so far: its description, steps, training seconds, and whether it was
    reused (:mod:`lowrank.run_cache`) rather than trained."""
    return [dict(run) for run in _runs]


def add_phase_seconds(name: str, seconds: float) -> None:
    """Add ``seconds`` to the phase ``name`` (and to ``$LOWRANK_PHASE_LOG`` when set)."""
    _phase_seconds[name] += seconds
    _write_log()


def record_run(description: str, steps: int, seconds: float, reused: bool = False) -> None:
    """Note one training run (for ``tools/run_course.py``'s breakdown per run), in ``$LOWRANK_PHASE_LOG`` when set."""
    _runs.append({"description": description, "steps": steps, "seconds": round(seconds, 1), "reused": reused})
    _write_log()


def _write_log() -> None:
    log = phase_log_path()
    if log is not None:
        log.write_text(json.dumps({"phases": _phase_seconds, "runs": _runs}, indent=1))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's wall time under ``name``; a phase nested in another phase is not counted
    twice (the outer one keeps the time), so the totals add up to at most the elapsed time."""
    if _open_phases:
        yield
        return
    _open_phases.append(name)
    start = time.perf_counter()
    try:
        yield
    finally:
        _open_phases.pop()
        add_phase_seconds(name, time.perf_counter() - start)


def timed_phase(name: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator form of :func:`phase`."""

    def wrap(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def timed(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with phase(name):
                return function(*args, **kwargs)

        return timed

    return wrap


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until a CUDA device has finished its queued work (nothing to wait for elsewhere).

    GPU kernels run asynchronously: without this, a wall-clock reading measures how fast
    Python launched the work, not the work. ``None``: the current CUDA device, if there is one.
    """
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def no_grad_forward(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> Callable[[], object]:
    """A zero-argument function running ``model(**batch)`` without autograd (for timing inference)."""

    def run() -> object:
        with torch.no_grad():
            return model(**batch)

    return run


def interleaved_medians(functions: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each function, called in turn (A B C A B C ...) ``rounds`` times.

    Interleaving makes a slow spell of the machine hit every contender alike, so the *ratios*
    of the medians are meaningful even when the absolute times drift.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 8) -> float:
    """This machine's ``torch.mm`` rate at torch's current thread count, in GFLOP/s (best of ``repeats``):
    the number to quote beside a measured time, so readers can scale it to their machine."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
