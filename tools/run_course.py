"""Run the course's notebooks, two at a time on a multi-core CPU, and say where the time went (`make course`).

    python tools/run_course.py [notebooks/02_lora_on_distilbert.ipynb ...] [--scratch build/fp32] [--skip-missing]

Without names it runs every lesson that ``course.toml`` lists (the path, the practitioner notebooks, the solutions);
a listed notebook that does not exist yet is refused before anything runs (``--skip-missing`` runs the others).
Each notebook runs headless in a fresh kernel. With the ``full`` profile (the default) the
executed notebooks replace the committed ones and the figures go to ``figures/``; with
``LOWRANK_PROFILE=quick`` nothing committed is touched: notebooks and figures are written
under ``build/quick/`` instead; ``--scratch DIR`` sends any profile's notebooks and figures to ``DIR``
(e.g. a full run in another ``LOWRANK_PRECISION``, to compare with the committed one). Outputs are cleaned (``tools/clean_outputs.py``) before saving.

The breakdown comes from two sources: each cell's execution time (recorded by nbclient, then
dropped from the saved notebook), and the phase totals the package records while it trains,
evaluates, tokenizes and loads (``lowrank.timing.phase``). "other" is the rest: kernel start,
imports, analysis and plotting in the notebook's own cells. The table is printed and written
to ``course_times.json`` beside the figures, keyed by the notebook's path as course.toml writes it, each with the machine's fp32 ``torch.mm``
rate and thread count it ran at, so times can be scaled to another machine. Running some notebooks
updates their entries and keeps the others'.

On a CPU with two or more cores the notebooks run two at a time (``--jobs``), each kernel on its share of
the cores (``OMP_NUM_THREADS``): the longest waiting notebook starts whenever a lane frees up (times from the
last report; course.toml's order without one), and a notebook that reads others' results (its ``needs`` in
course.toml) starts after them.
Two single-thread processes training independently did more per second than one process on two threads,
whose small matrices split poorly (measured under bf16: docs/benchmarks.md, "Two notebooks at a time, and bf16's
groups"). On a GPU, or with ``--jobs 1``, they run one
after another on torch's default threads. Ctrl-C stops the kernels; each stopped notebook's executed part is
saved under ``build/failed/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clean_outputs import clean_notebook  # noqa: E402
from course import COURSE, ROOT, Lesson, load_lessons, missing_notebooks  # noqa: E402

PHASES = ("load model", "load data", "tokenize", "train steps", "evaluate", "snapshot")
LIVE: dict[str, NotebookClient] = {}  # the kernels running now, by notebook, so that Ctrl-C can stop them
LIVE_LOCK = threading.Lock()


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


def run_notebook(path: Path, out_path: Path, figures: Path | None, threads: int | None = None) -> dict:
    """Execute ``path`` in a fresh kernel (on ``threads`` torch threads if given), save it cleaned to
    ``out_path``, return its timings."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "phases.json"
        env = {**os.environ, "LOWRANK_PHASE_LOG": str(log)}  # the kernel's environment; ours is left alone
        if figures is not None:
            env["LOWRANK_FIGURES"] = str(figures)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        client = NotebookClient(notebook, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}, record_timing=True)
        start = time.perf_counter()
        with LIVE_LOCK:
            LIVE[path.name] = client
        try:
            client.execute(env=env)
        except (CellExecutionError, DeadKernelError, KeyboardInterrupt):
            failed = ROOT / "build" / "failed" / path.name
            failed.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, failed)
            print(f"   {path.name} stopped: the executed part is in {shown(failed)}; {path.name} is unchanged",
                  flush=True)
            raise
        finally:
            with LIVE_LOCK:
                LIVE.pop(path.name, None)
        total = time.perf_counter() - start
        logged = json.loads(log.read_text()) if log.exists() else {}
    cells = [(cell_seconds(cell), cell.source.strip().splitlines()[0][:70] if cell.source.strip() else "")
             for cell in notebook.cells if cell.cell_type == "code"]
    clean_notebook(notebook)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out_path)
    phases = {name: round(seconds, 1) for name, seconds in logged.get("phases", {}).items()}
    other = max(0.0, total - sum(phases.values()))
    slowest = sorted(cells, reverse=True)[:3]
    return {"seconds": round(total, 1), "phases": phases, "other": round(other, 1),
            "slowest_cells": [{"seconds": round(s, 1), "first_line": line} for s, line in slowest],
            "runs": logged.get("runs", [])}


def print_table(timings: dict[str, dict]) -> None:
    names = [p for p in PHASES if any(p in t["phases"] for t in timings.values())]
    extra = sorted({p for t in timings.values() for p in t["phases"]} - set(PHASES))
    columns = names + extra + ["other"]
    widths = [max(13, len(c) + 2) for c in columns]
    print(f"\n{'notebook':<56}{'total s':>9}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for notebook, t in timings.items():
        values = [t["phases"].get(c, 0.0) for c in names + extra] + [t["other"]]
        print(f"{notebook:<56}{t['seconds']:>9,.0f}" + "".join(f"{v:>{w},.0f}" for v, w in zip(values, widths)))
    total = sum(t["seconds"] for t in timings.values())
    sums = [sum(t["phases"].get(c, 0.0) for t in timings.values()) for c in names + extra]
    sums.append(sum(t["other"] for t in timings.values()))
    print(f"{'all':<56}{total:>9,.0f}" + "".join(f"{v:>{w},.0f}" for v, w in zip(sums, widths)))


def print_runs(timings: dict[str, dict]) -> None:
    """Every training run of the notebooks, longest first: where the "train steps" column's time went."""
    runs = [(run["seconds"], notebook, run) for notebook, t in timings.items() for run in t.get("runs", [])]
    if not runs:
        return
    print(f"\n{'training run':<40}{'notebook':<56}{'steps':>6}{'seconds':>9}")
    for seconds, notebook, run in sorted(runs, key=lambda item: -item[0]):
        note = "  (reused: loaded, not trained)" if run["reused"] else ""
        print(f"{run['description'][:39]:<40}{notebook:<56}{run['steps']:>6}{seconds:>9,.0f}{note}")
    trained = [run for _, _, run in runs if not run["reused"]]
    print(f"{len(trained)} run(s) trained, {sum(r['seconds'] for r in trained):,.0f} s; "
          f"{len(runs) - len(trained)} reused")


def lanes(jobs: int | None) -> tuple[int, int | None]:
    """How many notebooks run at once, and the torch threads each kernel gets: ``$OMP_NUM_THREADS`` if set,
    else an equal share of torch's default thread count (its count of cores), or None (torch's default)
    when they run one at a time."""
    import torch

    cores = torch.get_num_threads()
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else min(2, cores)
    if jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, not {jobs}")
    chosen = os.environ.get("OMP_NUM_THREADS", "").strip()
    if chosen.isdigit() and int(chosen) > 0:
        return jobs, int(chosen)
    return jobs, (None if jobs == 1 else max(1, cores // jobs))


def stop_kernels() -> None:
    """End every running kernel (their process groups: the kernels run in sessions of their own, so a Ctrl-C
    in the terminal does not reach them)."""
    with LIVE_LOCK:
        clients = list(LIVE.values())
    for client in clients:
        provisioner = getattr(client.km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        try:
            if getattr(provisioner, "pgid", None):
                os.killpg(provisioner.pgid, signal.SIGTERM)
            elif process is not None:
                process.terminate()
        except (ProcessLookupError, PermissionError):
            pass


def ready(key: str, needs: dict[str, tuple[str, ...]], waiting: list[str], running: list[str]) -> bool:
    """Whether notebook ``key`` may start: every notebook it reads (``needs[key]``; ``"*"``: all the others) has
    finished."""
    wanted = needs.get(key, ())
    others = [other for other in waiting + running if other != key]
    return not others if "*" in wanted else not set(wanted) & set(others)


def chosen_lessons(names: list[Path], course: Path, skip_missing: bool) -> list[Lesson]:
    """The notebooks to run, as lessons: those named (each once; one course.toml does not list runs with no needs),
    or every lesson course.toml lists. A missing notebook is refused here, before any kernel starts."""
    lessons = load_lessons(course)
    if not names:
        missing = missing_notebooks(lessons)
        if missing and not skip_missing:
            raise SystemExit(f"{shown(course)} lists {len(missing)} notebook(s) that do not exist yet: "
                             f"{', '.join(lesson.notebook for lesson in missing)}.\nWrite them (docs/contributing.md), "
                             "remove them from course.toml, or run the others: tools/run_course.py --skip-missing")
        return [lesson for lesson in lessons if lesson not in missing]
    by_path = {lesson.path.resolve(): lesson for lesson in lessons}
    chosen: list[Lesson] = []
    for path in dict.fromkeys(name.resolve() for name in names):  # each once
        if not path.is_file():
            raise SystemExit(f"no such notebook: {path}")
        key = str(path.relative_to(course.parent)) if path.is_relative_to(course.parent) else str(path)
        chosen.append(by_path.get(path, Lesson(key, path.stem, "path", (), course.parent)))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson course.toml lists")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="write notebooks, figures and the breakdown under this folder, whatever the profile "
                             "(e.g. to compare a full run in another precision with the committed one)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks run at once, each on cores/jobs torch threads "
                             "(default: 2 on a CPU with two or more cores; 1 on one core or with a GPU)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="run the lessons that exist when course.toml lists some not written yet")
    parser.add_argument("--course", type=Path, default=COURSE, help=argparse.SUPPRESS)  # the tests' own lists
    args = parser.parse_args()
    lessons = chosen_lessons(args.notebooks, args.course.resolve(), args.skip_missing)
    keys = [lesson.notebook for lesson in lessons]  # course_times.json's keys, course.toml's paths
    paths = {lesson.notebook: lesson.path for lesson in lessons}
    needs = {lesson.notebook: lesson.needs for lesson in lessons}
    profile = os.environ.get("LOWRANK_PROFILE", "full").strip().lower() or "full"
    if profile == "full" and args.scratch is None:
        out_folder, figures, report = None, None, ROOT / "figures" / "course_times.json"
    else:
        scratch = (args.scratch or ROOT / "build" / profile).resolve()
        out_folder, figures, report = scratch, scratch / "figures", scratch / "course_times.json"
        print(f"profile {profile}: executed notebooks and figures go to {shown(scratch)}/ "
              "(the committed full-profile ones are not touched)")
    jobs, threads = lanes(args.jobs)
    import torch

    from lowrank.settings import bf16_is_fast, precision_name
    from lowrank.timing import matmul_gflops

    if threads is not None:
        torch.set_num_threads(threads)  # the probe runs on one notebook's threads
    threads = torch.get_num_threads()
    rate, precision = matmul_gflops(), precision_name()
    bf16_rate = matmul_gflops(torch.bfloat16) if bf16_is_fast("cpu") else None
    print(f"fp32 torch.mm 2048^3 on this machine: {rate:,.0f} GFLOP/s with {threads} thread(s)"
          + (f"; bf16 {bf16_rate:,.0f}" if bf16_rate else "") + f"; training precision {precision}")
    print(f"{len(keys)} notebook(s), {jobs} at a time, {threads} torch thread(s) each", flush=True)
    earlier = json.loads(report.read_text()).get("notebooks", {}) if report.exists() else {}
    expected = {key: earlier.get(key, {}).get("seconds", 0.0) for key in keys}
    timings: dict[str, dict] = {}
    lock = threading.Lock()

    def run_one(key: str) -> None:
        path = paths[key]
        # under a scratch folder, a lesson keeps course.toml's path (notebooks/solutions/...); another, its name
        out_path = path if out_folder is None else out_folder / (key if not Path(key).is_absolute()
                                                                  else Path("notebooks", path.name))
        print(f"== {key} (profile {profile}) starts", flush=True)
        timing = run_notebook(path, out_path, figures, threads if jobs > 1 else None)
        timing.update(matmul_gflops_fp32=round(rate), torch_threads=threads, notebooks_at_once=jobs,
                      precision=precision, matmul_gflops_bf16=round(bf16_rate) if bf16_rate else None,
                      cpu=platform.processor() or platform.machine(),
                      date=datetime.now().isoformat(timespec="minutes"))
        with lock:
            timings[key] = timing
            write_report(report, profile, {key: timing})  # after each notebook: a crash keeps it
        print(f"   {key} done in {timing['seconds']:,.0f} s", flush=True)

    waiting, running = list(keys), {}  # longest first (last report's times), in course.toml's order on ties
    start = time.perf_counter()
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while waiting or running:
                startable = [k for k in waiting if ready(k, needs, waiting, list(running.values()))]
                while startable and len(running) < jobs and failure is None:
                    key = max(startable, key=lambda k: (expected[k], -keys.index(k)))
                    startable.remove(key)
                    waiting.remove(key)
                    running[pool.submit(run_one, key)] = key
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    key = running.pop(future)
                    if future.exception() is not None and failure is None:
                        failure = future.exception()  # start nothing new; let the running ones finish
                        if running:
                            print(f"   {key} failed; waiting for {', '.join(running.values())} to finish", flush=True)
        except KeyboardInterrupt as interrupt:
            failure = interrupt
            print("\ninterrupted: stopping the running kernels", flush=True)
            stop_kernels()
            pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - start
    if waiting:
        print(f"not run: {', '.join(waiting)}", flush=True)
    if failure is not None:
        raise failure
    if waiting:
        raise SystemExit("these notebooks wait for each other (their needs in course.toml); "
                         "nothing was left to run them after")
    print_table({key: timings[key] for key in keys})
    print_runs({key: timings[key] for key in keys})
    print(f"wall time {wall:,.0f} s for {len(timings)} notebook(s), {jobs} at a time "
          f"(their times add up to {sum(t['seconds'] for t in timings.values()):,.0f} s)")
    if not args.notebooks:  # the whole course
        write_report(report, profile, {}, wall={"seconds": round(wall, 1), "notebooks": len(timings),
                                               "notebooks_at_once": jobs, "torch_threads": threads})
    print(f"breakdown written to {shown(report)}")


def write_report(report: Path, profile: str, timings: dict[str, dict], wall: dict | None = None) -> None:
    """Add ``timings`` to the JSON report, keeping the other notebooks' last measured entries; ``wall``
    (the last whole run's wall time) replaces the one recorded before."""
    report.parent.mkdir(parents=True, exist_ok=True)
    before = json.loads(report.read_text()) if report.exists() else {}
    merged = {**before.get("notebooks", {}), **timings}
    merged = dict(sorted(merged.items()))
    content = {"profile": profile, "notebooks": merged,
               "total_seconds": round(sum(t["seconds"] for t in merged.values()), 1)}
    if wall or before.get("last_whole_run"):
        content["last_whole_run"] = wall or before["last_whole_run"]
    partial = report.with_suffix(".partial")  # replaced in one step: a crash never leaves half a report
    partial.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(partial, report)


if __name__ == "__main__":
    main()
