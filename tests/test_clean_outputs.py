"""tools/clean_outputs.py: what `make course` removes from executed notebooks before they are committed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat

TOOL = Path(__file__).resolve().parent.parent / "tools" / "clean_outputs.py"
_spec = importlib.util.spec_from_file_location("clean_outputs", TOOL)
clean_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clean_outputs)

TIMESTAMPS = {"iopub.execute_input": "2026-11-29T12:04:07.232753Z", "iopub.status.busy": "2026-11-29T12:04:07.232462Z",
              "iopub.status.idle": "2026-11-29T12:04:13.656905Z", "shell.execute_reply": "2026-11-29T12:04:13.657Z"}


def _model(name: str, **state) -> dict:
    return {"model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0", "model_name": name,
            "state": state}


def _tqdm_bar(state: dict, key: str, left: str, value: float, total: float, right: str, hidden: bool = False) -> dict:
    """Add the widget models of one tqdm bar to ``state`` and return the display output that shows it."""
    state[f"{key}-layout"] = _model("LayoutModel", visibility="hidden" if hidden else None)
    state[f"{key}-left"] = _model("HTMLModel", value=left)
    state[f"{key}-bar"] = _model("FloatProgressModel", value=value, max=total, bar_style="success")
    state[f"{key}-right"] = _model("HTMLModel", value=right)
    state[key] = _model("HBoxModel", layout=f"IPY_MODEL_{key}-layout",
                        children=[f"IPY_MODEL_{key}-{part}" for part in ("left", "bar", "right")])
    return nbformat.v4.new_output("display_data", data={
        clean_outputs.WIDGET_VIEW: {"model_id": key, "version_major": 2, "version_minor": 0},
        "text/plain": "train:   0%|          | 0/60 [00:00<?, ?it/s]"})


def _executed_notebook() -> nbformat.NotebookNode:
    state: dict = {}
    finished = _tqdm_bar(state, "a", "train:\u2007100%", 60, 60, "\u200760/60\u2007[00:42&lt;00:00,\u20070.7s/it,\u2007loss=0.31]")
    stopped = _tqdm_bar(state, "b", "train:\u2007\u200725%", 15, 60, "\u200715/60\u2007[00:10&lt;00:30]")
    erased = _tqdm_bar(state, "c", "map:\u2007\u2007\u20070%", 3, 3, "\u20070/3", hidden=True)
    other = nbformat.v4.new_output("display_data", data={
        clean_outputs.WIDGET_VIEW: {"model_id": "slider", "version_major": 2, "version_minor": 0}, "text/plain": "IntSlider"})
    state["slider"] = _model("IntSliderModel", value=3)
    code = nbformat.v4.new_code_cell("train(model)", execution_count=1, outputs=[
        finished, stopped, erased,
        nbformat.v4.new_output("stream", name="stderr",
                               text="/home/someone/.venv/lib/python3.11/site-packages/x.py:12: UserWarning: careful\n"
                                    "  warnings.warn(\n"),
        nbformat.v4.new_output("stream", name="stdout", text="trained 60 steps\n"),
    ])
    code.metadata["execution"] = dict(TIMESTAMPS)
    widget = nbformat.v4.new_code_cell("slider", execution_count=2, outputs=[other])
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"), code, widget])
    notebook.metadata["widgets"] = {clean_outputs.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}
    return notebook


def test_timestamps_paths_and_empty_stderr_go():
    notebook = _executed_notebook()
    clean_outputs.clean_notebook(notebook)
    code = notebook.cells[1]
    assert "execution" not in code.metadata
    texts = "".join(output.get("text", "") for output in code.outputs)
    assert "/home/someone" not in texts and "warnings.warn" not in texts
    assert all(output.get("text", "x").strip() for output in code.outputs)
    assert code.outputs[-1] == nbformat.v4.new_output("stream", name="stdout", text="trained 60 steps\n")


def test_tqdm_widget_bars_become_their_final_text_line():
    notebook = _executed_notebook()
    clean_outputs.clean_notebook(notebook)
    bars = [output for output in notebook.cells[1].outputs if output.get("name") == "stderr"]
    assert [bar.text for bar in bars] == [
        "train: 100%|██████████| 60/60 [00:42<00:00, 0.7s/it, loss=0.31]\n",
        "train:  25%|██        | 15/60 [00:10<00:30]\n",
    ]  # the hidden (leave=False) bar is dropped, as text mode erases it
    nbformat.validate(notebook)


def test_widget_state_kept_while_another_widget_needs_it_and_dropped_after():
    notebook = _executed_notebook()
    clean_outputs.clean_notebook(notebook)
    assert clean_outputs.WIDGET_VIEW in notebook.cells[2].outputs[0]["data"]  # not a tqdm bar: untouched
    assert "widgets" in notebook.metadata
    notebook.cells.pop()
    clean_outputs.clean_notebook(notebook)
    assert "widgets" not in notebook.metadata


def test_main_rewrites_the_file(tmp_path):
    path = tmp_path / "nb.ipynb"
    nbformat.write(_executed_notebook(), path)
    clean_outputs.main([str(path)])
    text = path.read_text()
    assert "iopub" not in text and "/home/someone" not in text and "60/60" in text
