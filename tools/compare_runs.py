"""Two course runs side by side: notebook 02's results and each notebook's time breakdown.

    python tools/compare_runs.py build/fp32 figures --names fp32 bf16

Each argument is a run's folder from ``tools/run_course.py``: ``figures/`` for the committed run, the
``--scratch`` folder for another (files are looked up in the folder, then in its ``figures/``). It reads ``02_results.json`` (test and final
validation accuracy and median step time per method, and each test tweet's correctness where the run saved it,
for McNemar's paired test of the two runs' models) and ``course_times.json`` (seconds per notebook
and phase) from each, and prints Markdown tables: accuracies with their difference in points, and
times with the ratio second/first, so a change (a precision, a code change) can be read at a glance.
A notebook missing from one run is shown with a dash.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowrank.comparison import mcnemar

PHASES = ("train steps", "evaluate", "load model", "load data", "tokenize", "snapshot", "other")


def find(folder: Path, name: str) -> Path | None:
    """``folder/name``, else ``folder/figures/name``, else None."""
    return next((path for path in (folder / name, folder / "figures" / name) if path.is_file()), None)


def read_json(folder: Path, name: str) -> dict:
    path = find(folder, name)
    if path is None:
        raise SystemExit(f"no {name} in {folder} or {folder / 'figures'}: pass a folder written by tools/run_course.py")
    return json.loads(path.read_text())


def accuracy_table(first: dict, second: dict, names: tuple[str, str]) -> list[str]:
    """Notebook 02's methods: accuracies in both runs and the difference (second - first) in points; where both
    runs saved each test tweet's correctness, McNemar's paired test of the two runs' models."""
    a, b = names
    paired = "test_correct" in first and "test_correct" in second
    rows = [f"| method | test {a} | test {b} | Δ points | validation {a} | validation {b} | s/step {a} | s/step {b} | ratio |"
            + (f" only {a} right | only {b} right | McNemar p |" if paired else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if paired else "")]
    for label, r1 in first["results"].items():
        r2 = second["results"].get(label)
        if r2 is None:
            continue
        val = lambda r: f"{r['validation accuracy']:.1%}" if "validation accuracy" in r else "–"  # noqa: E731
        row = (f"| {label} | {r1['test accuracy']:.1%} | {r2['test accuracy']:.1%} | "
               f"{100 * (r2['test accuracy'] - r1['test accuracy']):+.1f} | {val(r1)} | {val(r2)} | "
               f"{r1['s/step']:.2f} | {r2['s/step']:.2f} | {r2['s/step'] / r1['s/step']:.2f} |")
        if paired:
            c1, c2 = first["test_correct"].get(label), second["test_correct"].get(label)
            if c1 is None or c2 is None or len(c1) != len(c2):  # e.g. a quick run's 256 test tweets against 1,000
                row += " – | – | – |"
            else:
                test = mcnemar([x == "1" for x in c1], [x == "1" for x in c2])
                p = "< 0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"
                row += f" {test.only_first_right} | {test.only_second_right} | {p} |"
        rows.append(row)
    return rows


def seconds(entry: dict | None, phase: str | None = None) -> float | None:
    if entry is None:
        return None
    if phase is None:
        return entry["seconds"]
    if phase == "other":
        return entry.get("other")
    return (entry.get("phases") or {}).get(phase)


def time_table(first: dict, second: dict, names: tuple[str, str]) -> list[str]:
    """Seconds per notebook (total and per phase) in both runs, with the ratio second/first."""
    a, b = names
    notebooks = sorted(set(first["notebooks"]) | set(second["notebooks"]))
    rows = [f"| notebook | phase | {a} s | {b} s | {b}/{a} |", "|---|---|---|---|---|"]
    show = lambda x: "–" if x is None else f"{x:,.0f}"  # noqa: E731
    for notebook in notebooks:
        e1, e2 = first["notebooks"].get(notebook), second["notebooks"].get(notebook)
        for phase in (None, *PHASES):
            s1, s2 = seconds(e1, phase), seconds(e2, phase)
            if phase is not None and not (s1 or s2):
                continue
            ratio = f"{s2 / s1:.2f}" if s1 and s2 else "–"
            rows.append(f"| {notebook.split('_')[0] if phase else notebook} | {phase or '**total**'} | "
                        f"{show(s1)} | {show(s2)} | {ratio} |")
    both = [n for n in notebooks if n in first["notebooks"] and n in second["notebooks"]]
    total1, total2 = (sum(run["notebooks"][n]["seconds"] for n in both) for run in (first, second))
    rows.append(f"| all in both ({len(both)}) | **total** | {total1:,.0f} | {total2:,.0f} | {total2 / total1:.2f} |"
                if both else "| (no notebook in both runs) | | | | |")
    for name, entries in ((a, first["notebooks"]), (b, second["notebooks"])):
        rates = sorted({(e.get("matmul_gflops_fp32"), e.get("precision", "fp32"), e.get("torch_threads"))
                        for e in entries.values()}, key=str)
        rows.append(f"\n{name}: " + "; ".join(f"{p} training, fp32 torch.mm {g} GFLOP/s, {t} thread(s)"
                                              for g, p, t in rates))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="folder of the first run (e.g. the baseline)")
    parser.add_argument("second", type=Path, help="folder of the second run")
    parser.add_argument("--names", nargs=2, default=("first", "second"), help="column names for the two runs")
    args = parser.parse_args()
    names = tuple(args.names)
    for name in ("02_results.json",):
        if find(args.first, name) and find(args.second, name):
            print("\n".join(accuracy_table(read_json(args.first, name), read_json(args.second, name), names)))
            print()
    print("\n".join(time_table(read_json(args.first, "course_times.json"),
                               read_json(args.second, "course_times.json"), names)))


if __name__ == "__main__":
    main()
