"""Run the course's notebooks in order and say where the time went (`make course`).

    python tools/run_course.py [notebooks/02_lora_on_distilbert.ipynb ...] [--scratch build/fp32]

Each notebook runs headless in a fresh kernel. With the ``full`` profile (the default) the
executed notebooks replace the committed ones and the figures go to ``figures/``; with
``LOWRANK_PROFILE=quick`` nothing committed is touched: notebooks and figures are written
under ``build/quick/`` instead; ``--scratch DIR`` sends any profile's notebooks and figures to ``DIR``
(e.g. a full run in another ``LOWRANK_PRECISION``, to compare with the committed one). Outputs are cleaned (``tools/clean_outputs.py``) before saving.

The breakdown comes from two sources: each cell's execution time (recorded by nbclient, then
dropped from the saved notebook), and the phase totals the package records while it trains,
evaluates, tokenizes and loads (``lowrank.timing.phase``). "other" is the rest: kernel start,
imports, analysis and plotting in the notebook's own cells. The table is printed and written
to ``course_times.json`` beside the figures, each notebook with the machine's fp32 ``torch.mm``
rate and thread count it ran at, so times can be scaled to another machine. Running some notebooks
updates their entries and keeps the others'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clean_outputs import clean_notebook  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("load model", "load data", "tokenize", "train steps", "evaluate", "snapshot")


def shown(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside it (shorter messages), else as is."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def cell_seconds(cell: nbformat.NotebookNode) -> float:
    """Execution time of one executed code cell, from nbclient's timing metadata."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return 0.0
    parse = lambda stamp: datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def run_notebook(path: Path, out_path: Path, figures: Path | None) -> dict:
    """Execute ``path`` in a fresh kernel, save it cleaned to ``out_path``, return its timings."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "phases.json"
        saved = {name: os.environ.get(name) for name in ("LOWRANK_PHASE_LOG", "LOWRANK_FIGURES")}
        os.environ["LOWRANK_PHASE_LOG"] = str(log)
        if figures is not None:
            os.environ["LOWRANK_FIGURES"] = str(figures)
        client = NotebookClient(notebook, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}, record_timing=True)
        start = time.perf_counter()
        try:
            client.execute()
        except (CellExecutionError, KeyboardInterrupt):
            failed = ROOT / "build" / "failed" / path.name
            failed.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, failed)
            print(f"   stopped: the executed part is in {shown(failed)}; {path.name} is unchanged")
            raise
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        total = time.perf_counter() - start
        phases = json.loads(log.read_text()) if log.exists() else {}
    cells = [(cell_seconds(cell), cell.source.strip().splitlines()[0][:70] if cell.source.strip() else "")
             for cell in notebook.cells if cell.cell_type == "code"]
    clean_notebook(notebook)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out_path)
    phases = {name: round(seconds, 1) for name, seconds in phases.items()}
    other = max(0.0, total - sum(phases.values()))
    slowest = sorted(cells, reverse=True)[:3]
    return {"seconds": round(total, 1), "phases": phases, "other": round(other, 1),
            "slowest_cells": [{"seconds": round(s, 1), "first_line": line} for s, line in slowest]}


def print_table(timings: dict[str, dict]) -> None:
    names = [p for p in PHASES if any(p in t["phases"] for t in timings.values())]
    extra = sorted({p for t in timings.values() for p in t["phases"]} - set(PHASES))
    columns = names + extra + ["other"]
    print(f"\n{'notebook':<44}{'total s':>9}" + "".join(f"{c:>13}" for c in columns))
    for notebook, t in timings.items():
        values = [t["phases"].get(c, 0.0) for c in names + extra] + [t["other"]]
        print(f"{notebook:<44}{t['seconds']:>9,.0f}" + "".join(f"{v:>13,.0f}" for v in values))
    total = sum(t["seconds"] for t in timings.values())
    sums = [sum(t["phases"].get(c, 0.0) for t in timings.values()) for c in names + extra]
    sums.append(sum(t["other"] for t in timings.values()))
    print(f"{'all':<44}{total:>9,.0f}" + "".join(f"{v:>13,.0f}" for v in sums))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb in order")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="write notebooks, figures and the breakdown under this folder, whatever the profile "
                             "(e.g. to compare a full run in another precision with the committed one)")
    args = parser.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    profile = os.environ.get("LOWRANK_PROFILE", "full").strip().lower() or "full"
    if profile == "full" and args.scratch is None:
        out_folder, figures, report = None, None, ROOT / "figures" / "course_times.json"
    else:
        scratch = (args.scratch or ROOT / "build" / profile).resolve()
        out_folder, figures, report = scratch / "notebooks", scratch / "figures", scratch / "course_times.json"
        print(f"profile {profile}: executed notebooks and figures go to {shown(scratch)}/ "
              "(the committed full-profile ones are not touched)")
    import torch

    from lowrank.settings import bf16_is_fast, precision_name
    from lowrank.timing import matmul_gflops

    rate, precision = matmul_gflops(), precision_name()
    bf16_rate = matmul_gflops(torch.bfloat16) if bf16_is_fast("cpu") else None
    threads = torch.get_num_threads()
    print(f"fp32 torch.mm 2048^3 on this machine: {rate:,.0f} GFLOP/s with {threads} thread(s)"
          + (f"; bf16 {bf16_rate:,.0f}" if bf16_rate else "") + f"; training precision {precision}")
    timings: dict[str, dict] = {}
    for path in notebooks:
        path = path.resolve()
        out_path = path if out_folder is None else out_folder / path.name
        print(f"== {shown(path)} (profile {profile})", flush=True)
        timings[path.name] = run_notebook(path, out_path, figures)
        timings[path.name].update(matmul_gflops_fp32=round(rate), torch_threads=threads, precision=precision,
                                  matmul_gflops_bf16=round(bf16_rate) if bf16_rate else None,
                                  cpu=platform.processor() or platform.machine(),
                                  date=datetime.now().isoformat(timespec="minutes"))
        write_report(report, profile, {path.name: timings[path.name]})  # after each notebook: a crash keeps it
        print(f"   done in {timings[path.name]['seconds']:,.0f} s", flush=True)
    print_table(timings)
    print(f"breakdown written to {shown(report)}")


def write_report(report: Path, profile: str, timings: dict[str, dict]) -> None:
    """Add ``timings`` to the JSON report, keeping the other notebooks' last measured entries."""
    report.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(report.read_text()).get("notebooks", {}) if report.exists() else {}
    merged.update(timings)
    merged = dict(sorted(merged.items()))
    report.write_text(json.dumps({"profile": profile, "notebooks": merged,
                                  "total_seconds": round(sum(t["seconds"] for t in merged.values()), 1)},
                                 indent=1) + "\n")


if __name__ == "__main__":
    main()
