"""Argument checks shared by the adapter layers: clear errors instead of torch stack traces.

Behind the layers of notebook 01, section 2, and notebook 03, section 2.
"""

from __future__ import annotations

import math

from torch import nn


def check_adapter_args(base: object, rank: object, alpha: object, dropout: object) -> None:
    """Raise a ``TypeError``/``ValueError`` naming the first bad adapter argument."""
    if not isinstance(base, nn.Linear):
        raise TypeError(
            f"base must be a torch.nn.Linear, got {type(base).__name__}; "
            "LoRA/DoRA here adapt linear layers only"
        )
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__} ({rank!r})")
    if rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} ({alpha!r})")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a number, got {type(dropout).__name__} ({dropout!r})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
