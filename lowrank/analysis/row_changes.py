"""ΔM and ΔD of one weight matrix, streamed in row blocks, from full weights or adapter factors.

Part of ``python -m lowrank.analyze`` (notebook A3, "Figure 2 for your own checkpoints").

The DoRA paper's eq. 3-4 compare each output feature (a row of ``nn.Linear.weight`` [out, in])
of a fine-tuned ``W_t`` with the pretrained ``W_0``:

    ΔM = mean_n | ||W_t[n]|| - ||W_0[n]|| |,      ΔD = mean_n (1 - cos(W_t[n], W_0[n])).

Both need three numbers per row: ``||W_0[n]||²``, ``||W_t[n]||²`` and ``<W_t[n], W_0[n]>``. They are
summed over blocks of rows in float64, so no float64 copy of a whole matrix ever exists and every
checkpoint of a module shares one pass over ``W_0``. An adapter is never merged:

* LoRA, ``W_t = W_0 + s·B·A``: with ``c[n] = <W_0[n], (BA)[n]> = (B ∘ (W_0 Aᵀ))[n].sum()`` and
  ``||(BA)[n]||² = B[n] (A Aᵀ) B[n]ᵀ``,
  ``||W_t[n]||² = ||W_0[n]||² + 2s·c[n] + s²·||(BA)[n]||²`` and ``<W_t[n], W_0[n]> = ||W_0[n]||² + s·c[n]``;
  the only intermediates are ``[rows, r]`` and ``[r, r]``.
* DoRA, ``W_t = m · V / ||V||_row`` with ``V = W_0 + s·B·A``: ``||W_t[n]|| = |m[n]|`` and
  ``<W_t[n], W_0[n]> = m[n] · <V[n], W_0[n]> / ||V[n]||``, with ``V``'s numbers as LoRA's.

A fused ``qkv`` weight ``[3·d, d]`` is analysed like any other: each of its rows is one output
feature of the query, key or value projection, and ΔM/ΔD average over all of them. Weights stored
``[in, out]`` (GPT-2's ``Conv1D``; PEFT's ``fan_in_fan_out``) are read with ``transposed=True``:
their output features are columns, summed over the same row blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Union

import torch

from lowrank.magnitude_direction import COSINE_EPS, deltas_from_row_sums

#: Elements per float64 block (8 MiB): memory stays flat whatever the matrix size.
BLOCK_ELEMENTS = 2**20


class RowBlocks(Protocol):
    """A 2-D matrix that hands out blocks of rows."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def rows(self, start: int, stop: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorRows:
    """A matrix already in memory (any device, any float dtype)."""

    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tensor.shape)  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor.detach()[start:stop]


@dataclass(frozen=True)
class FullUpdate:
    """A checkpoint that stores the fine-tuned matrix itself."""

    weight: RowBlocks
    method: str = "full"


@dataclass(frozen=True)
class FactoredUpdate:
    """A LoRA update ``s·B·A`` (``A`` [r, in], ``B`` [out, r]), a DoRA one when ``magnitude`` [out] is given."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None

    @property
    def method(self) -> str:
        return "lora" if self.magnitude is None else "dora"


Update = Union[FullUpdate, FactoredUpdate]


def check_shapes(
    base: tuple[int, ...],
    transposed: bool = False,
    weight: tuple[int, ...] | None = None,
    lora_A: tuple[int, ...] | None = None,
    lora_B: tuple[int, ...] | None = None,
    magnitude: tuple[int, ...] | None = None,
) -> None:
    """Raise ``ValueError`` naming the shapes if a checkpoint's tensors do not fit a base weight of shape ``base``."""
    base = tuple(base)
    if len(base) != 2:
        raise ValueError(f"the base weight has shape {base}, not a 2-D [out, in] matrix")
    out_features, in_features = base[::-1] if transposed else base
    if weight is not None and tuple(weight) != base:
        raise ValueError(f"the checkpoint's weight has shape {tuple(weight)}, the base's {base}")
    if lora_A is not None or lora_B is not None:
        a, b = tuple(lora_A or ()), tuple(lora_B or ())
        if len(a) != 2 or len(b) != 2 or a[1] != in_features or b[0] != out_features or a[0] != b[1]:
            raise ValueError(f"adapter factors A {a} and B {b} do not fit the base weight {base} "
                             f"(need A [r, {in_features}] and B [{out_features}, r])")
    if magnitude is not None and tuple(magnitude) != (out_features,):
        raise ValueError(f"the DoRA magnitude has shape {tuple(magnitude)}, need ({out_features},)")


def check_update(update: Update, base_shape: tuple[int, ...], transposed: bool = False) -> None:
    """:func:`check_shapes` for an update."""
    if isinstance(update, FullUpdate):
        check_shapes(base_shape, transposed, weight=tuple(update.weight.shape))
    else:
        magnitude = None if update.magnitude is None else tuple(update.magnitude.shape)
        check_shapes(base_shape, transposed, lora_A=tuple(update.lora_A.shape), lora_B=tuple(update.lora_B.shape),
                     magnitude=magnitude)


def magnitude_direction_changes(
    base: RowBlocks,
    updates: Sequence[Update],
    transposed: bool = False,
    block_elements: int = BLOCK_ELEMENTS,
) -> list[tuple[float, float]]:
    """``(ΔM, ΔD)`` of every update against ``base``, reading ``base`` once, one block of rows at a time.

    Args:
        base: the pretrained weight, ``[out, in]`` (``[in, out]`` if ``transposed``).
        updates: the checkpoints of this one matrix: full weights or LoRA/DoRA factors.
        transposed: the stored matrices are ``[in, out]``; output features are their columns.
        block_elements: about how many elements each float64 block holds.
    """
    shape = tuple(base.shape)
    for update in updates:
        check_update(update, shape, transposed)
    stored_rows, width = shape
    out_features = width if transposed else stored_rows
    step = max(1, block_elements // max(width, 1))
    f64 = torch.float64
    norm0 = torch.zeros(out_features, dtype=f64)
    squares = {i: torch.zeros(out_features, dtype=f64) for i, u in enumerate(updates) if isinstance(u, FullUpdate)}
    dots = {i: torch.zeros(out_features, dtype=f64) for i in squares}
    factors = {i: (u.lora_A.detach().cpu().to(f64), u.lora_B.detach().cpu().to(f64))
               for i, u in enumerate(updates) if isinstance(u, FactoredUpdate)}
    # <W0[n], (BA)[n]> needs W0·Aᵀ [out, r]; accumulated as a whole when W0 is stored transposed.
    projected = {i: torch.zeros((out_features, a.shape[0]), dtype=f64) for i, (a, _) in factors.items()}
    full = list(squares)
    sources = [base] + [updates[i].weight for i in full]  # type: ignore[union-attr]
    equation = "ij,ij->j" if transposed else "ij,ij->i"  # row (or column) dot products, no [rows, in] temporary
    # Two float64 work blocks, reused: no allocation per block, so memory stays flat (no allocator growth).
    base_block = torch.empty((min(step, stored_rows), width), dtype=f64)
    other_block = torch.empty_like(base_block) if full else base_block
    for start, stop, blocks in _prefetched(sources, stored_rows, step):
        w0 = base_block[: stop - start].copy_(blocks[0].detach())
        target = slice(None) if transposed else slice(start, stop)
        norm0[target] += torch.einsum(equation, w0, w0)
        for i, block in zip(full, blocks[1:]):
            w = other_block[: stop - start].copy_(block.detach())
            squares[i][target] += torch.einsum(equation, w, w)
            dots[i][target] += torch.einsum(equation, w, w0)
        for i, (a, _) in factors.items():
            if transposed:  # W0 [in, out]: (W0ᵀ Aᵀ)[n] = sum over input rows i of W0[i, n] A[:, i]
                projected[i] += w0.T @ a[:, start:stop].T
            else:
                projected[i][start:stop] = w0 @ a.T
    results = []
    for i, update in enumerate(updates):
        if i in squares:
            square, dot = squares[i], dots[i]
        else:
            assert isinstance(update, FactoredUpdate)
            a, b = factors[i]
            s = float(update.scaling)
            cross = (b * projected[i]).sum(1)
            low_rank_square = ((b @ (a @ a.T)) * b).sum(1)
            square = (norm0 + 2 * s * cross + s * s * low_rank_square).clamp_min(0)
            dot = norm0 + s * cross
            if update.magnitude is not None:
                m = update.magnitude.detach().cpu().to(f64)
                dot = m * dot / square.sqrt().clamp_min(COSINE_EPS)
                square = m * m
        results.append(deltas_from_row_sums(norm0, square, dot))
    return results


def _prefetched(sources: Sequence[RowBlocks], rows: int, step: int) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """``(start, stop, [block of each source])`` over all rows, the next blocks read while these are used.

    Reading (disk) and arithmetic (CPU) then overlap; at most two blocks per source are held at once.
    """
    def read(start: int) -> list[torch.Tensor]:
        return [source.rows(start, min(start + step, rows)) for source in sources]

    starts = list(range(0, rows, step))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, starts[0]) if starts else None
        for k, start in enumerate(starts):
            assert pending is not None
            blocks = pending.result()
            pending = pool.submit(read, starts[k + 1]) if k + 1 < len(starts) else None
            yield start, min(start + step, rows), blocks
