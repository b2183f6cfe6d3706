"""Fair timing on a noisy machine: interleave the contenders and report medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


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
