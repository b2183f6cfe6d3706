"""Drop warning messages that carry this machine's paths, empty stderr and per-cell timestamps from executed notebooks.

`make course` runs it after executing each notebook, so committed outputs show no absolute paths
(tqdm's "IProgress not found" notice, library deprecation warnings). Other output is untouched.

    python tools/clean_outputs.py notebooks/01_lora_from_scratch.ipynb ...
"""

from __future__ import annotations

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


def clean_notebook(notebook: nbformat.NotebookNode) -> None:
    """Clean one executed notebook in place: path-bearing warnings, empty stderr, per-cell timestamps."""
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
