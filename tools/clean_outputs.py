"""Drop warning messages that carry this machine's paths, empty stderr and per-cell timestamps from executed notebooks.

`make course` runs it after executing each notebook, so committed outputs show no absolute paths
(library deprecation warnings), and tqdm's progress bars, which run as widgets when ipywidgets is
installed, are saved as the final text line of each bar (the widget state, bulky and unreadable
outside JupyterLab, is dropped). Other output is untouched.

    python tools/clean_outputs.py notebooks/01_lora_from_scratch.ipynb ...
"""

from __future__ import annotations

import html
import re
import sys

import nbformat

WARNING_LINE = re.compile(r"^(/|[A-Za-z]:\\).*:\d+: \w*Warning: ")


def clean(text: str) -> str:
    """Remove each warning line that starts with a file path, and the source line printed under it."""
    out, skip_next = [], False
    for line in text.splitlines(keepends=True):
        if WARNING_LINE.match(line):
            skip_next = True
            continue
        if skip_next and line.startswith("  "):
            skip_next = False
            continue
        skip_next = False
        out.append(line)
    return "".join(out)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BAR_WIDTH = 10  # tqdm's text bar when it cannot tell the terminal width


def progress_text(model_id: str, state: dict) -> str | None:
    """The text line tqdm would have printed for the widget bar ``model_id`` at its last update.

    tqdm draws a bar as an HBox of [HTML (description and percentage), a progress bar, HTML (counts,
    times, postfix)]. Returns None for any other widget, and "" for a bar that is no longer in the
    saved state or hidden (closed with ``leave=False``), which text mode would have erased too.
    """
    box = state.get(model_id)
    if box is None:
        return ""
    layout = state.get(str(box.get("state", {}).get("layout", "")).removeprefix("IPY_MODEL_"), {})
    if layout.get("state", {}).get("visibility") == "hidden":
        return ""
    children = [ref.removeprefix("IPY_MODEL_") for ref in box.get("state", {}).get("children", [])]
    models = [state.get(child) for child in children]
    kinds = [model.get("model_name") if model else None for model in models]
    if box.get("model_name") != "HBoxModel" or len(kinds) != 3 or kinds[0] != "HTMLModel" or kinds[2] != "HTMLModel" \
            or kinds[1] not in ("FloatProgressModel", "IntProgressModel"):
        return None
    left, bar, right = (model["state"] for model in models)
    total, value = bar.get("max") or 0, bar.get("value") or 0
    filled = min(BAR_WIDTH, round(BAR_WIDTH * value / total)) if total > 0 else 0
    line = html.unescape(left.get("value", "")) + "|" + "█" * filled + " " * (BAR_WIDTH - filled) + "|" \
        + html.unescape(right.get("value", ""))
    return line.replace("\u2007", " ").rstrip() + "\n"


def widget_bars_as_text(notebook: nbformat.NotebookNode) -> None:
    """Replace each tqdm widget output by a stderr line with the bar's final text; drop the widget state
    once no widget output refers to it."""
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    remaining = False
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW) if output.get("output_type") == "display_data" else None
            text = progress_text(view.get("model_id", ""), state) if view else None
            if text is None:
                remaining = remaining or view is not None
                outputs.append(output)
            elif text:
                outputs.append(nbformat.v4.new_output("stream", name="stderr", text=text))
        cell["outputs"] = outputs
    if not remaining:
        notebook.metadata.pop("widgets", None)


def clean_notebook(notebook: nbformat.NotebookNode) -> None:
    """Clean one executed notebook in place: tqdm widget bars as text, path-bearing warnings, empty
    stderr, per-cell timestamps."""
    widget_bars_as_text(notebook)
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                output["text"] = clean(output["text"])
                if not output["text"].strip():
                    continue
            kept.append(output)
        cell["outputs"] = kept


def main(paths: list[str]) -> None:
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        clean_notebook(notebook)
        nbformat.write(notebook, path)


if __name__ == "__main__":
    main(sys.argv[1:])
