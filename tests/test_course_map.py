"""tools/course_map.py: README's course map and headline results come from course.toml and the committed results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "course_map.py"
_spec = importlib.util.spec_from_file_location("course_map", TOOL)
course_map = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(course_map)


def test_readme_map_and_results_match_course_toml_and_figures():
    text = course_map.README.read_text(encoding="utf-8")
    for name, content in course_map.blocks().items():
        assert course_map.replace_block(text, name, content) == text, (
            f"README.md's {name} block is out of date: run python tools/course_map.py --write")


def test_every_lesson_has_one_line_in_course_order(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    (tmp_path / "course.toml").write_text(
        '[[lesson]]\nnotebook = "notebooks/01_a.ipynb"\ntitle = "First"\npart = "path"\n\n'
        '[[lesson]]\nnotebook = "notebooks/in_practice/A9_b.ipynb"\ntitle = "Later"\npart = "in practice"\n')
    lessons = course_map.load_lessons(tmp_path / "course.toml")
    times = {"notebooks": {"notebooks/01_a.ipynb": {"seconds": 125.0, "precision": "fp32", "matmul_gflops_fp32": 67,
                                                    "torch_threads": 1, "notebooks_at_once": 2, "date": "2026-12-07T05:00"}}}
    table = course_map.course_map(lessons, times)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 2
    assert "[`01_a`](notebooks/01_a.ipynb)" in rows[0] and "2 min" in rows[0]
    assert "`A9_b` (being written)" in rows[1] and "not measured yet" in rows[1]
    assert "fp32 training, fp32 `torch.mm` 67 GFLOP/s per thread" in table
    # A second sitting run the same way: one clause, with the range of the two sittings' rates.
    (tmp_path / "notebooks" / "in_practice").mkdir()
    (tmp_path / "notebooks" / "in_practice" / "A9_b.ipynb").write_text("{}")
    times["notebooks"]["notebooks/in_practice/A9_b.ipynb"] = {"seconds": 30.0, "precision": "fp32",
                                                              "matmul_gflops_fp32": 91.4, "torch_threads": 1,
                                                              "notebooks_at_once": 2, "date": "2026-12-08T05:00"}
    table = course_map.course_map(lessons, times)
    assert table.count("fp32 training") == 1 and "fp32 `torch.mm` 67–91 GFLOP/s per thread" in table


@pytest.mark.parametrize("seconds, said", [(1.3, "1 s"), (89, "89 s"), (95.3, "2 min"), (1292.9, "22 min"),
                                           (3900, "1 h 5 min")])
def test_durations_read_as_a_person_says_them(seconds, said):
    assert course_map.duration(seconds) == said


def test_missing_markers_are_named(tmp_path):
    with pytest.raises(SystemExit, match="lacks the markers"):
        course_map.replace_block("no markers here", "course-map", "x")
