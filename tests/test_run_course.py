"""tools/run_course.py: the lessons course.toml lists, two at a time, each kernel on its threads, readers after
what they read (course.toml's `needs`), a lesson not written yet refused before anything runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "run_course.py"
_spec = importlib.util.spec_from_file_location("run_course", TOOL)
run_course = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_course)

# Each of the first two notebooks says it started, then waits for the other's word: run one after the
# other, the first would wait in vain. The third reads both and must start after them.
MEETS = """import os, time
from pathlib import Path
here = Path({folder!r})
(here / "{me}.started").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
deadline = time.time() + 60
while not (here / "{other}.started").exists():
    assert time.time() < deadline, "{other} never ran beside {me}"
    time.sleep(0.05)
(here / "{me}.finished").touch()"""
READS = """from pathlib import Path
here = Path({folder!r})
assert (here / "a.finished").exists() and (here / "c.finished").exists()"""


def _course(folder: Path, *lessons: tuple[str, tuple[str, ...]]) -> Path:
    """A course.toml in ``folder`` listing ``(notebook, needs)`` in order."""
    entries = [f'[[lesson]]\nnotebook = "{notebook}"\ntitle = "{notebook}"\npart = "path"\n'
               + (f"needs = {list(needs)!r}\n".replace("'", '"') if needs else "") for notebook, needs in lessons]
    course = folder / "course.toml"
    course.write_text("\n".join(entries))
    return course


def _notebook(path: Path, source: str) -> Path:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_two_notebooks_run_at_once_and_a_reader_waits(tmp_path, monkeypatch):
    folder = tmp_path / "meet"
    folder.mkdir()
    (tmp_path / "lessons" / "extra").mkdir(parents=True)
    _notebook(tmp_path / "lessons" / "a.ipynb", MEETS.format(folder=str(folder), me="a", other="c"))
    _notebook(tmp_path / "lessons" / "extra" / "b.ipynb", READS.format(folder=str(folder)))
    _notebook(tmp_path / "lessons" / "c.ipynb", MEETS.format(folder=str(folder), me="c", other="a"))
    # the reader is listed first: course.toml's needs, not its order, make it wait
    course = _course(tmp_path, ("lessons/extra/b.ipynb", ("*",)), ("lessons/a.ipynb", ()), ("lessons/c.ipynb", ()))
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["run_course.py", "--course", str(course), "--jobs", "2",
                                      "--scratch", str(tmp_path / "out")])
    run_course.main()
    assert (folder / "a.started").read_text() == (folder / "c.started").read_text() == "1"
    report = json.loads((tmp_path / "out" / "course_times.json").read_text())
    assert sorted(report["notebooks"]) == ["lessons/a.ipynb", "lessons/c.ipynb", "lessons/extra/b.ipynb"]
    assert {entry["notebooks_at_once"] for entry in report["notebooks"].values()} == {2}
    assert report["last_whole_run"]["notebooks"] == 3  # no names: the whole course
    for key in report["notebooks"]:  # saved under the scratch folder at course.toml's path
        assert (tmp_path / "out" / key).exists()


def test_a_lesson_not_written_yet_is_refused_before_anything_runs(tmp_path, monkeypatch):
    _notebook(tmp_path / "a.ipynb", f"open({str(tmp_path / 'ran')!r}, 'w')")
    course = _course(tmp_path, ("a.ipynb", ()), ("in_practice/A9_later.ipynb", ()))
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", "--course", str(course), "--scratch", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"do not exist yet: in_practice/A9_later\.ipynb"):
        run_course.main()
    assert not (tmp_path / "ran").exists()
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--skip-missing", "--jobs", "1"])
    run_course.main()
    assert (tmp_path / "ran").exists()
    assert list(json.loads((tmp_path / "out" / "course_times.json").read_text())["notebooks"]) == ["a.ipynb"]


def test_course_toml_mistakes_are_named(tmp_path):
    course = _course(tmp_path, ("a.ipynb", ("b.ipynb",)))
    with pytest.raises(SystemExit, match="needs b.ipynb, which it does not list"):
        run_course.load_lessons(course)
    course.write_text('[[lesson]]\nnotebook = "a.ipynb"\ntitle = "A"\npart = "appendix"\n')
    with pytest.raises(SystemExit, match="part 'appendix' is not one of"):
        run_course.load_lessons(course)


def test_the_repository_course_lists_its_parts_in_order():
    from course import PARTS  # tools/, on the path since run_course was loaded

    lessons = run_course.load_lessons()
    parts = [lesson.part for lesson in lessons]
    assert parts == sorted(parts, key=PARTS.index)  # the path, then in practice, then the solutions
    assert all(lesson.notebook.startswith("notebooks/") for lesson in lessons)
    on_disk = {str(path.relative_to(run_course.ROOT)) for path in (run_course.ROOT / "notebooks").rglob("*.ipynb")
               if not any(part.startswith(".") for part in path.parts)}
    unlisted = on_disk - {lesson.notebook for lesson in lessons}
    assert not unlisted, f"notebooks that course.toml does not list (so neither make course nor the site knows them): {unlisted}"


def test_readiness_follows_needs():
    needs = {"z": ("*",), "y": ("x",)}
    assert run_course.ready("x", needs, ["x", "y", "z"], [])
    assert not run_course.ready("y", needs, ["y"], ["x"])  # x still running
    assert run_course.ready("y", needs, ["y", "z"], ["w"])
    assert not run_course.ready("z", needs, ["z"], ["w"])  # "*": after every other notebook
    assert run_course.ready("z", needs, ["z"], [])


def test_lanes_share_the_cores_and_refuse_nonsense(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert run_course.lanes(2) == (2, 2)
    assert run_course.lanes(1) == (1, None)  # one at a time: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_course.lanes(2) == (2, 1)
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        run_course.lanes(0)


def test_a_failing_notebook_stops_new_starts_and_is_saved(tmp_path, monkeypatch):
    _notebook(tmp_path / "a.ipynb", "raise RuntimeError('broken on purpose')")
    _notebook(tmp_path / "b.ipynb", "print('never')")
    course = _course(tmp_path, ("a.ipynb", ()), ("b.ipynb", ("a.ipynb",)))
    monkeypatch.setattr(run_course, "ROOT", tmp_path)  # build/failed/ goes here
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", "--course", str(course), "--jobs", "2",
                                      "--scratch", str(tmp_path / "out")])
    with pytest.raises(run_course.CellExecutionError, match="broken on purpose"):
        run_course.main()
    assert (tmp_path / "build" / "failed" / "a.ipynb").exists()
    assert not (tmp_path / "out" / "b.ipynb").exists()


def test_a_pair_waiting_for_each_other_is_refused(tmp_path, monkeypatch):
    paths = [_notebook(tmp_path / f"{name}.ipynb", "pass") for name in "ab"]
    course = _course(tmp_path, ("a.ipynb", ("b.ipynb",)), ("b.ipynb", ("a.ipynb",)))
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", *map(str, paths), "--course", str(course),
                                      "--scratch", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="wait for each other"):
        run_course.main()


def test_ctrl_c_stops_the_kernels_and_keeps_the_executed_part(tmp_path):
    import signal
    import subprocess
    import time

    name = f"sleeper_{tmp_path.name}.ipynb"
    marker = tmp_path / "running"
    path = _notebook(tmp_path / name, f"from pathlib import Path\nPath({str(marker)!r}).touch()\nimport time\ntime.sleep(300)")
    runner = subprocess.Popen([sys.executable, str(TOOL), str(path), "--jobs", "2", "--scratch", str(tmp_path / "out")],
                              env={**__import__("os").environ, "LOWRANK_PROFILE": "quick"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              # a test worker may ignore SIGINT, and a child inherits that: give the runner Ctrl-C
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert time.time() < deadline and runner.poll() is None, "the notebook never started"
            time.sleep(0.1)
        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=60)  # far less than the cell's 300 s
    finally:
        runner.kill()
    failed = run_course.ROOT / "build" / "failed" / name
    try:
        assert runner.returncode != 0
        assert "stopping the running kernels" in output
        assert failed.exists()
    finally:
        failed.unlink(missing_ok=True)


def test_each_training_run_is_reported_with_its_notebook(tmp_path, monkeypatch, capsys):
    """The breakdown per training run: what lowrank.timing.record_run noted in the kernel (train and train_once
    note every run) reaches course_times.json and the printed table, reused runs marked."""
    _notebook(tmp_path / "a.ipynb", "from lowrank.timing import record_run\n"
                                    "record_run('LoRA q,v', 500, 350.0)\nrecord_run('DoRA', 250, 0.4, reused=True)")
    course = _course(tmp_path, ("a.ipynb", ()))
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", "--course", str(course), "--jobs", "1",
                                      "--scratch", str(tmp_path / "out")])
    run_course.main()
    runs = json.loads((tmp_path / "out" / "course_times.json").read_text())["notebooks"]["a.ipynb"]["runs"]
    assert runs == [{"description": "LoRA q,v", "steps": 500, "seconds": 350.0, "reused": False},
                    {"description": "DoRA", "steps": 250, "seconds": 0.4, "reused": True}]
    printed = capsys.readouterr().out
    assert "1 run(s) trained, 350 s; 1 reused" in printed and "(reused: loaded, not trained)" in printed
