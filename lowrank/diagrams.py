"""Diagrams of the LoRA and DoRA layers, drawn in code so that they are versioned and tested.

Both use PyTorch's axes: ``nn.Linear.weight`` is ``[out, in]`` and the layer computes
``y = x @ W.T + b``. Every box names its tensor and its shape, with the sizes filled in.

* :func:`lora_diagram`: ``x`` goes through the frozen ``W0`` and through ``A`` (``[r, in]``) then
  ``B`` (``[out, r]``); the branch is scaled by ``alpha / r`` and added.
* :func:`dora_diagram`: ``V = W0 + (alpha/r)·B·A``; its norm is taken per *output row*
  (``V.norm(dim=1)``, one number per output feature); the row-normalised direction ``V / ||V||``
  is scaled row by row by the magnitude ``m`` (``[out]``, starting at ``||W0||`` per row).

Each function returns the :class:`~matplotlib.figure.Figure` (created with ``pyplot``, so a
notebook shows it with ``plt.show()``); ``save_as`` also writes it as a PNG through
:func:`lowrank.settings.figure_path` (``figures/``, or ``$LOWRANK_FIGURES``).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from lowrank.settings import figure_path

FROZEN = "#d9d9d9"
TRAINABLE = "#ffd8a8"
COMPUTED = "#d0e7ff"
IO = "#ffffff"


def _box(ax: Axes, x: float, y: float, text: str, color: str, size: float = 9.5) -> Text:
    """A rounded box of ``text`` centred at ``(x, y)`` in axes coordinates."""
    return ax.text(x, y, text, ha="center", va="center", fontsize=size, transform=ax.transAxes,
                   bbox={"boxstyle": "round,pad=0.45", "facecolor": color, "edgecolor": "#444444"})


def _arrow(ax: Axes, source: Text, target: Text, label: str = "", start: tuple[float, float] = (1.0, 0.5),
           end: tuple[float, float] = (0.0, 0.5), label_offset: tuple[float, float] = (0.0, 6.0),
           label_ha: str = "center") -> None:
    """An arrow from a point of ``source``'s box to a point of ``target``'s (fractions of each text's extent)."""
    ax.annotate("", xy=end, xycoords=target, xytext=start, textcoords=source,
                arrowprops={"arrowstyle": "-|>", "color": "#333333", "shrinkA": 7, "shrinkB": 7,
                            "linewidth": 1.2})
    if label:
        ax.annotate(label, xy=(0.5, 0.5), xycoords=_Midpoint(source, target, start, end),
                    xytext=label_offset, textcoords="offset points", ha=label_ha, va="bottom", fontsize=8.5,
                    color="#333333")


class _Midpoint:
    """Annotation coordinates at the middle of an arrow between two text artists (resolved at draw time)."""

    def __init__(self, source: Text, target: Text, start: tuple[float, float], end: tuple[float, float]) -> None:
        self.source, self.target, self.start, self.end = source, target, start, end

    def __call__(self, renderer):  # matplotlib calls this with the renderer and wants a Bbox in display units
        from matplotlib.transforms import Bbox

        a = self.source.get_window_extent(renderer)
        b = self.target.get_window_extent(renderer)
        xa, ya = a.x0 + self.start[0] * a.width, a.y0 + self.start[1] * a.height
        xb, yb = b.x0 + self.end[0] * b.width, b.y0 + self.end[1] * b.height
        return Bbox.from_extents(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def _finish(fig: Figure, save_as: str | None) -> Figure:
    if save_as is not None:
        fig.savefig(figure_path(save_as), dpi=120)
    return fig


def lora_diagram(in_features: int = 384, out_features: int = 384, rank: int = 8, alpha: float = 16,
                 save_as: str | None = None) -> Figure:
    """The LoRA layer ``y = W0 x + b + (alpha/r) · B (A x)``: frozen path on top, low-rank branch below.

    Args:
        in_features / out_features / rank / alpha: the sizes written into the shape labels.
        save_as: a file name (e.g. ``"01_lora_layer.png"``) to save the figure under
            :func:`~lowrank.settings.figure_path`; ``None`` saves nothing.
    """
    scaling = alpha / rank
    fig, ax = plt.subplots(figsize=(10.5, 4.2))
    ax.set_axis_off()
    x = _box(ax, 0.06, 0.5, f"x\n[…, in]\n= […, {in_features}]", IO)
    w0 = _box(ax, 0.46, 0.8, f"W₀  frozen (requires_grad=False)\n[out, in] = [{out_features}, {in_features}]",
              FROZEN)
    a = _box(ax, 0.27, 0.22, f"A  trainable, random\n[r, in] = [{rank}, {in_features}]", TRAINABLE)
    b = _box(ax, 0.55, 0.22, f"B  trainable, starts at 0\n[out, r] = [{out_features}, {rank}]",
             TRAINABLE)
    scale = _box(ax, 0.77, 0.22, f"× α/r\n= {alpha:g}/{rank} = {scaling:g}", COMPUTED)
    plus = _box(ax, 0.84, 0.5, "+", IO, size=14)
    y = _box(ax, 0.95, 0.5, f"y\n[…, out]\n= […, {out_features}]", IO)
    _arrow(ax, x, w0, start=(1.0, 0.8), end=(0.0, 0.5))
    _arrow(ax, x, a, start=(1.0, 0.2), end=(0.0, 0.5))
    _arrow(ax, a, b, label=f"x Aᵀ: […, r] = […, {rank}]")
    _arrow(ax, b, scale)
    _arrow(ax, w0, plus, label=f"x W₀ᵀ + b: […, {out_features}]", start=(1.0, 0.5), end=(0.5, 1.0),
           label_offset=(6.0, 2.0), label_ha="left")
    _arrow(ax, scale, plus, start=(0.5, 1.0), end=(0.5, 0.0))
    _arrow(ax, plus, y)
    ax.text(0.5, 0.02, f"trainable: r·(in + out) = {rank}·({in_features} + {out_features}) = "
                       f"{rank * (in_features + out_features):,} numbers instead of out·in = "
                       f"{in_features * out_features:,};   merged: W' = W₀ + (α/r)·B A, [out, in]",
            ha="center", va="bottom", fontsize=8.5, transform=ax.transAxes, color="#333333")
    ax.set_title("The LoRA layer (PyTorch axes: weight is [out, in], y = x Wᵀ + b)", fontsize=11)
    fig.tight_layout()
    return _finish(fig, save_as)


def dora_diagram(in_features: int = 384, out_features: int = 384, rank: int = 8, alpha: float = 16,
                 save_as: str | None = None) -> Figure:
    """The DoRA layer ``W' = m ⊙ V / ||V||_row`` with ``V = W0 + (alpha/r) · B A``, and a picture of the row norm.

    Left: the computation, box by box, with shapes. Right: the ``[out, in]`` weight with one row
    (one output feature) shaded: the norm is taken along that row (``dim=1``), and the row's one
    magnitude ``m[n]`` scales it.

    Args:
        in_features / out_features / rank / alpha: the sizes written into the shape labels.
        save_as: a file name (e.g. ``"03_dora_layer.png"``) to save the figure under
            :func:`~lowrank.settings.figure_path`; ``None`` saves nothing.
    """
    fig, (ax, matrix_ax) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3.1, 1]})
    ax.set_axis_off()
    w0 = _box(ax, 0.12, 0.84, f"W₀  frozen\n[out, in] = [{out_features}, {in_features}]", FROZEN)
    ba = _box(ax, 0.12, 0.5, f"B A  trainable\nB [out, r] = [{out_features}, {rank}]\n"
                             f"A [r, in] = [{rank}, {in_features}]", TRAINABLE)
    v = _box(ax, 0.45, 0.67, f"V = W₀ + (α/r)·B A\n[out, in] = [{out_features}, {in_features}]", COMPUTED)
    norm = _box(ax, 0.45, 0.3, f"‖V‖ per output row\nV.norm(dim=1): [out] = [{out_features}]\n"
                               "detached in backprop (paper §4.3)", COMPUTED)
    direction = _box(ax, 0.78, 0.67, f"direction V / ‖V‖\n[out, in] = [{out_features}, {in_features}]\n"
                                     "every row has norm 1", COMPUTED)
    magnitude = _box(ax, 0.78, 0.3, f"magnitude m  trainable\n[out] = [{out_features}]\nstarts at ‖W₀‖ per row",
                     TRAINABLE)
    merged = _box(ax, 0.78, 0.05, "W' = m ⊙ V/‖V‖  (row n × m[n])\n"
                                  f"[out, in] = [{out_features}, {in_features}];  y = x W'ᵀ + b", COMPUTED)
    _arrow(ax, w0, v, start=(1.0, 0.5), end=(0.0, 0.7))
    _arrow(ax, ba, v, start=(1.0, 0.5), end=(0.0, 0.3))
    _arrow(ax, v, direction)
    _arrow(ax, v, norm, start=(0.5, 0.0), end=(0.5, 1.0))
    _arrow(ax, norm, direction, start=(1.0, 0.8), end=(0.2, 0.0))
    _arrow(ax, direction, merged, start=(0.95, 0.0), end=(0.95, 1.0))
    _arrow(ax, magnitude, merged, start=(0.5, 0.0), end=(0.5, 1.0))
    fig.suptitle("The DoRA layer (PyTorch axes: one norm and one magnitude per output feature = per row)",
                 fontsize=11)

    rows, cols, shaded = 8, 10, 2
    matrix_ax.set_xlim(-0.5, cols + 2.6)
    matrix_ax.set_ylim(rows + 1.6, -1.4)
    matrix_ax.set_aspect("equal")
    matrix_ax.set_axis_off()
    matrix_ax.add_patch(Rectangle((0, 0), cols, rows, facecolor=COMPUTED, edgecolor="#444444"))
    matrix_ax.add_patch(Rectangle((0, shaded), cols, 1, facecolor="#4a90d9", edgecolor="#444444"))
    matrix_ax.add_patch(Rectangle((cols + 1, 0), 1, rows, facecolor=TRAINABLE, edgecolor="#444444"))
    matrix_ax.add_patch(Rectangle((cols + 1, shaded), 1, 1, facecolor="#e8590c", edgecolor="#444444"))
    matrix_ax.annotate("", xy=(cols - 0.2, shaded + 0.5), xytext=(0.2, shaded + 0.5),
                       arrowprops={"arrowstyle": "-|>", "color": "white", "linewidth": 1.5})
    matrix_ax.text(cols / 2, -0.4, f"V  [out, in] = [{out_features}, {in_features}]", ha="center", va="bottom",
                   fontsize=9)
    matrix_ax.text(cols + 1.5, -0.4, f"m  [{out_features}]", ha="center", va="bottom", fontsize=9)
    matrix_ax.text(cols / 2, rows + 0.3, "row n = output feature n:\n‖V[n, :]‖ along dim=1, then × m[n]",
                   ha="center", va="top", fontsize=8.5)
    matrix_ax.text(-0.3, shaded + 0.5, "n", ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return _finish(fig, save_as)
