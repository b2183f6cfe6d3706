"""ΔM/ΔD written out with NumPy, independently of lowrank: merged weights, then loops over output rows."""

from __future__ import annotations

import numpy as np


def dm_dd(weight: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """The DoRA paper's eq. 3-4 over the rows (output features) of two ``[out, in]`` matrices, in float64."""
    weight, base = np.asarray(weight, np.float64), np.asarray(base, np.float64)
    assert weight.shape == base.shape and weight.ndim == 2
    dm, dd = [], []
    for row, row0 in zip(weight, base):
        norm, norm0 = np.sqrt((row**2).sum()), np.sqrt((row0**2).sum())
        dm.append(abs(norm - norm0))
        dd.append(1 - (row @ row0) / (norm * norm0))
    return float(np.mean(dm)), float(np.mean(dd))


def merged(base: np.ndarray, lora_A: np.ndarray, lora_B: np.ndarray, scaling: float,
           magnitude: np.ndarray | None = None) -> np.ndarray:
    """``W0 + s·B·A`` (LoRA), or ``m · V / ||V||_row`` with ``V = W0 + s·B·A`` (DoRA), all ``[out, in]``."""
    v = np.asarray(base, np.float64) + scaling * (np.asarray(lora_B, np.float64) @ np.asarray(lora_A, np.float64))
    if magnitude is None:
        return v
    return np.asarray(magnitude, np.float64)[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
