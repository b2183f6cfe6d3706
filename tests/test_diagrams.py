"""The LoRA and DoRA diagrams build under Agg, name every tensor with its shape, and save where asked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from lowrank.diagrams import dora_diagram, lora_diagram


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_lora_diagram_labels_every_shape():
    fig = lora_diagram(in_features=384, out_features=768, rank=8, alpha=16)
    fig.canvas.draw()  # the arrows' coordinates resolve at draw time
    text = _texts(fig)
    for label in ("W₀", "[out, in] = [768, 384]", "[r, in] = [8, 384]", "[out, r] = [768, 8]", "α/r",
                  "16/8 = 2", "[…, in]", "= […, 384]", "= […, 768]", "x Aᵀ: […, r] = […, 8]", "+"):
        assert label in text, label
    assert "frozen" in text and "starts at 0" in text


def test_dora_diagram_labels_every_shape_and_the_row_norm():
    fig = dora_diagram(in_features=384, out_features=1536, rank=4, alpha=8)
    fig.canvas.draw()
    text = _texts(fig)
    for label in ("V = W₀ + (α/r)·B A", "[out, in] = [1536, 384]", "B [out, r] = [1536, 4]", "A [r, in] = [4, 384]",
                  "V.norm(dim=1): [out] = [1536]", "magnitude m", "[out] = [1536]", "V / ‖V‖", "m ⊙ V/‖V‖",
                  "starts at ‖W₀‖ per row", "detached"):
        assert label in text, label


def test_save_as_writes_under_the_figures_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_FIGURES", str(tmp_path))
    lora_diagram(save_as="lora.png")
    dora_diagram(save_as="dora.png")
    assert (tmp_path / "lora.png").stat().st_size > 10_000
    assert (tmp_path / "dora.png").stat().st_size > 10_000
