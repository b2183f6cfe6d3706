"""The README's course map and headline results, generated: never typed by hand.

    python tools/course_map.py            # print both blocks
    python tools/course_map.py --write    # replace them in README.md, between their markers
    python tools/course_map.py --check    # exit 1 if README.md's blocks differ from what course.toml and figures/ give

The map lists every lesson of ``course.toml`` in its order (the path, then the practitioner notebooks, then the
solutions), each with its time from ``figures/course_times.json`` (the last full-profile ``make course``). The results
table reads the committed ``figures/*.json``/``*.csv`` and ``bench/results.json``, and puts each number next to the
paper's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from course import ROOT, Lesson, load_lessons  # noqa: E402

README = ROOT / "README.md"
FIGURES = ROOT / "figures"
PART_NAMES = {"path": "the course", "in practice": "in practice (optional)", "solutions": "solutions"}
BLOCKS = ("course-map", "results")


def duration(seconds: float) -> str:
    """A time as a reader says it: "45 s", "3 min", "1 h 5 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def course_map(lessons: list[Lesson], times: dict) -> str:
    """One table row per lesson, with its full-profile time; a line on where the times come from."""
    entries = times.get("notebooks", {})
    rows = ["| part | notebook | what it teaches | full profile |", "|---|---|---|---|"]
    shown_part = None
    for lesson in lessons:
        part = PART_NAMES[lesson.part] if lesson.part != shown_part else ""
        shown_part = lesson.part
        link = f"[`{lesson.name}`]({lesson.notebook})" if lesson.path.is_file() else f"`{lesson.name}` (being written)"
        seconds = entries.get(lesson.notebook, {}).get("seconds")
        rows.append(f"| {part} | {link} | {lesson.title} | {duration(seconds) if seconds else 'not measured yet'} |")
    measured = [entries[lesson.notebook] for lesson in lessons if lesson.notebook in entries]
    if measured:
        # One clause per way of running (precision, threads, lanes), with the range of matmul rates of its sittings.
        rates: dict[tuple, list] = {}
        for e in measured:
            key = (e.get("precision", "?"), e.get("torch_threads"), e.get("notebooks_at_once"))
            rates.setdefault(key, []).append(e.get("matmul_gflops_fp32"))
        said = "; ".join(
            f"{precision} training, fp32 `torch.mm` {_rate_range(found)} GFLOP/s per thread, {threads} thread(s) per "
            f"notebook, {jobs} notebook(s) at a time" for (precision, threads, jobs), found in sorted(rates.items(), key=str))
        dates = sorted({e.get("date", "")[:10] for e in measured})
        rows.append("")
        rows.append(f"Times: each notebook's last full-profile run by `make course` on a 2-core CPU ({said}; "
                    f"{' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; `figures/course_times.json`).")
        whole = times.get("last_whole_run")
        if whole:
            rows[-1] += (f" The last whole run took {duration(whole['seconds'])} of wall time for "
                         f"{whole['notebooks']} notebooks.")
    return "\n".join(rows)


def _rate_range(rates: list) -> str:
    """``148`` or ``91–158``: the matmul rates of the sittings a clause covers."""
    known = sorted({round(r) for r in rates if r is not None})
    if not known:
        return "?"
    return str(known[0]) if len(known) == 1 else f"{known[0]}–{known[-1]}"


def signed(value: float, digits: int = 2) -> str:
    """``+0.83``, ``−0.62``: the sign always shown, a true minus sign."""
    return f"{value:+.{digits}f}".replace("-", "−")


def _read_csv(name: str) -> list[dict]:
    with open(FIGURES / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def headline_results() -> str:
    """This course's headline numbers, read from the committed results, next to the papers'."""
    from lowrank.figure2 import PAPER_CORRELATIONS
    from lowrank.magnitude_direction import pearson

    rows = ["| | this course (committed full-profile run) | the paper |", "|---|---|---|"]
    accuracy = {name: r["test accuracy"] for name, r in json.loads((FIGURES / "02_results.json").read_text())["results"].items()}
    rows.append(f"| LoRA q,v r=8 against full fine-tuning, test accuracy (notebook 02) | {100 * accuracy['LoRA q,v r=8']:.1f} % "
                f"against {100 * accuracy['full fine-tuning']:.1f} % | LoRA: \"on-par or better than fine-tuning\" (RoBERTa, DeBERTa, GPT-2, GPT-3) |")
    dora = json.loads((FIGURES / "03_results.json").read_text())["results"]
    rows.append(f"| DoRA against LoRA, q,v r=8, test accuracy (notebook 03) | {100 * dora['dora']['test accuracy']:.1f} % against "
                f"{100 * dora['lora']['test accuracy']:.1f} % (one seed, 1,000 test tweets: under ~2 points is not resolved) | "
                "DoRA: \"consistently outperforms LoRA\" (LLaMA, LLaVA, VL-BART) |")
    ratio = json.loads((ROOT / "bench" / "results.json").read_text())["ratios"]["DoRA detached / not detached memory"]
    rows.append(f"| DoRA's training-step memory with its norm detached, `lowrank.DoRALinear` (detach plus a recomputed product; `make bench`; notebook 03's plain detach saves less) | {signed(100 * (ratio - 1), 1)} % | −24.4 % (LLaMA-7B), "
                "−12.4 % (VL-BART) |")
    points = [p for p in _read_csv("04_points.csv") if p["module"].endswith("q_lin")]
    study = {(r["method"]): r for r in _read_csv("05_ablation_correlations.csv")
             if r["condition"] == "short_wd_paper" and r["statistic"] == "within checkpoints" and r["kind"] == "pearson"}
    for method, quoted in PAPER_CORRELATIONS.items():
        mine = [p for p in points if p["method"] == method]
        r = pearson([float(p["delta_d"]) for p in mine], [float(p["delta_m"]) for p in mine])
        line = (f"| Figure 2, {method}: correlation of ΔM with ΔD, query matrices | {signed(r)} over all points "
                "(notebook 04, this course's training)")
        if method in study:
            s = study[method]
            line += (f"; {signed(float(s['value']))} [{signed(float(s['low']))}, {signed(float(s['high']))}] across "
                     "layers with weight decay at our estimate of the paper's cumulative strength (notebook 05's study)")
        rows.append(line + f" | {signed(quoted)} (VL-BART) |")
    return "\n".join(rows)


def blocks() -> dict[str, str]:
    times_file = FIGURES / "course_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    return {"course-map": course_map(load_lessons(), times), "results": headline_results()}


def replace_block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}: generated by tools/course_map.py --write -->", f"<!-- {name} end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the markers {start} ... {end}")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{content}\n{end}{after}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite README.md's generated blocks")
    action.add_argument("--check", action="store_true", help="exit 1 if README.md's blocks are out of date")
    args = parser.parse_args()
    generated = blocks()
    if not (args.write or args.check):
        print("\n\n".join(generated.values()))
        return
    text = README.read_text(encoding="utf-8")
    updated = text
    for name, content in generated.items():
        updated = replace_block(updated, name, content)
    if args.check:
        if updated != text:
            raise SystemExit("README.md's course map or results are out of date: run python tools/course_map.py --write")
        print("README.md's course map and results match course.toml and figures/")
    elif updated != text:
        README.write_text(updated, encoding="utf-8")
        print("README.md updated")


if __name__ == "__main__":
    main()
