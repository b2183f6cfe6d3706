"""tools/build_site.py: the site's navigation follows course.toml, and no page may fetch from another host."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "build_site.py"
_spec = importlib.util.spec_from_file_location("build_site", TOOL)
build_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_site)


def test_navigation_lists_the_path_first_then_in_practice_then_solutions_in_course_order():
    lessons = build_site.load_lessons()
    page = build_site.index_page(lessons)
    captions = [line.removeprefix(":caption: ") for line in page.splitlines() if line.startswith(":caption: ")]
    assert captions[:3] == ["The course", "In practice (optional)", "Solutions"]
    listed = [line.rsplit("<", 1)[1].rstrip(">") for line in page.splitlines() if line.endswith(">") and " <" in line]
    assert listed[:len(lessons)] == [lesson.notebook.removesuffix(".ipynb") for lesson in lessons]


def test_remote_scripts_and_styles_are_found(tmp_path):
    (tmp_path / "local.html").write_text('<script src="_static/mathjax/MathJax.js"></script><a href="https://x.org">x</a>')
    (tmp_path / "cdn.html").write_text('<script async src="https://cdn.example/mathjax.js"></script>')
    (tmp_path / "css.html").write_text("<link rel='stylesheet' href='//fonts.example/css'>")
    assert build_site.remote_assets(tmp_path) == ["cdn.html", "css.html"]
