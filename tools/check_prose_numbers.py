"""List the numbers a notebook's prose quotes that no output above them prints.

    python tools/check_prose_numbers.py [notebooks/01_lora_from_scratch.ipynb ...] [--strict]   # default: course.toml's

Every number in the course's prose should be printed by a cell above it. This looks at each
markdown cell's decimals and percentages (e.g. ``90.2 %``, ``0.41``, ``1.2e-4``), and searches the
text outputs of the code cells above it for the same number, allowing the output to show more
digits (``90.23%`` backs ``90.2 %``). Integers are skipped (section numbers, ranks, years), and so are
numbers inside LaTeX (``$...$``) and inline code, which are formulas and settings, not results.
Quotes of papers are not results either: it cannot tell them apart, so read its list, don't
obey it. ``--strict`` exits with 1 when something is listed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

NUMBER = re.compile(r"(?<![\w.])[-−]?(\d+\.\d+(?:e[-−]?\d+)?|\d+(?:\.\d+)?e[-−]?\d+|\d+(?:\.\d+)? ?%)")
LATEX_OR_CODE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`", re.S)
OUTPUT_NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?(?:e[-+−]?\d+)?")


def _value(text: str) -> tuple[float, int, bool]:
    """The number, its decimals as written, and whether it is a percentage."""
    text = text.replace("−", "-").replace(",", "").strip()
    percent = text.endswith("%")
    text = text.rstrip("% ")
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return float(text), decimals, percent


def _backed(quoted: str, outputs: str) -> bool:
    value, decimals, percent = _value(quoted)
    for found in OUTPUT_NUMBER.findall(outputs):
        try:
            candidate = float(found.replace(",", "").replace("−", "-"))
        except ValueError:
            continue
        for scale in ((1.0, 100.0) if percent else (1.0,)):
            if abs(round(candidate * scale, decimals) - value) < 0.5 * 10 ** -decimals + 1e-12:
                return True
    return False


def unbacked_numbers(path: Path) -> list[tuple[int, str, str]]:
    """(cell index, number, context) for each prose number no earlier output prints."""
    notebook = nbformat.read(path, as_version=4)
    outputs_so_far: list[str] = []
    missing = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                outputs_so_far.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
            continue
        if cell.cell_type != "markdown":
            continue
        prose = LATEX_OR_CODE.sub(" ", cell.source)
        text = "\n".join(outputs_so_far)
        for match in NUMBER.finditer(prose):
            if not _backed(match.group(1), text):
                start = max(0, match.start() - 50)
                missing.append((index, match.group(1), " ".join(prose[start:match.end() + 30].split())))
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson course.toml lists that exists")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    if not args.notebooks:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from course import load_lessons, missing_notebooks

        lessons = load_lessons()
        args.notebooks = [lesson.path for lesson in lessons if lesson not in missing_notebooks(lessons)]
    total = 0
    for path in args.notebooks:
        missing = unbacked_numbers(path)
        total += len(missing)
        print(f"{path}: {len(missing)} prose number(s) not printed above")
        for index, number, context in missing:
            print(f"  cell {index}: {number!r} in '…{context}…'")
    sys.exit(1 if args.strict and total else 0)


if __name__ == "__main__":
    main()
