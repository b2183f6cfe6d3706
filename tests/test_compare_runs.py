"""tools/compare_runs.py: two course runs side by side (notebook 02's accuracies, per-notebook times)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "compare_runs.py"
_spec = importlib.util.spec_from_file_location("compare_runs", TOOL)
compare_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_runs)


def _run(folder: Path, accuracy: float, step: float, seconds: dict[str, float], precision: str) -> Path:
    (folder / "figures").mkdir(parents=True)
    results = {"LoRA q,v r=8": {"test accuracy": accuracy, "validation accuracy": accuracy - 0.01, "s/step": step}}
    (folder / "figures" / "02_results.json").write_text(json.dumps({"profile": "full", "results": results}))
    notebooks = {name: {"seconds": total, "phases": {"train steps": 0.8 * total}, "other": 0.2 * total,
                        "matmul_gflops_fp32": 100, "precision": precision, "torch_threads": 1}
                 for name, total in seconds.items()}
    (folder / "course_times.json").write_text(json.dumps({"profile": "full", "notebooks": notebooks}))
    return folder


def test_accuracies_differences_and_time_ratios(tmp_path):
    first = _run(tmp_path / "a", 0.902, 1.40, {"02_x.ipynb": 1000.0, "03_y.ipynb": 500.0}, "fp32")
    second = _run(tmp_path / "b", 0.897, 0.84, {"02_x.ipynb": 600.0}, "bf16")
    accuracy = "\n".join(compare_runs.accuracy_table(*(compare_runs.read_json(f, "02_results.json") for f in (first, second)),
                                                    ("fp32", "bf16")))
    assert "| LoRA q,v r=8 | 90.2% | 89.7% | -0.5 | 89.2% | 88.7% | 1.40 | 0.84 | 0.60 |" in accuracy
    times = "\n".join(compare_runs.time_table(*(compare_runs.read_json(f, "course_times.json") for f in (first, second)),
                                             ("fp32", "bf16")))
    assert "| 02_x.ipynb | **total** | 1,000 | 600 | 0.60 |" in times
    assert "| 03_y.ipynb | **total** | 500 | – | – |" in times  # only in the first run
    assert "| all in both (1) | **total** | 1,000 | 600 | 0.60 |" in times
    assert "bf16 training, fp32 torch.mm 100 GFLOP/s, 1 thread(s)" in times


def test_a_folder_without_the_files_says_what_it_needs(tmp_path):
    with pytest.raises(SystemExit, match="no course_times.json"):
        compare_runs.read_json(tmp_path, "course_times.json")


def test_saved_correctness_gives_the_paired_test_across_runs():
    results = {"LoRA q,v r=8": {"test accuracy": 0.5, "validation accuracy": 0.5, "s/step": 1.0}}
    first = {"results": results, "test_correct": {"LoRA q,v r=8": "1111111111" + "0" * 10}}
    second = {"results": results, "test_correct": {"LoRA q,v r=8": "0" * 10 + "1111111111"}}
    rows = compare_runs.accuracy_table(first, second, ("a", "b"))
    assert rows[0].endswith("only a right | only b right | McNemar p |")
    assert rows[2].endswith("| 10 | 10 | 1.000 |")  # an even split of the discordant tweets
    second["test_correct"]["LoRA q,v r=8"] = "1" * 20
    assert compare_runs.accuracy_table(second, first, ("a", "b"))[2].endswith("| 10 | 0 | 0.002 |")
    without = compare_runs.accuracy_table({"results": results}, second, ("a", "b"))
    assert "McNemar" not in without[0]
