"""tools/run_course.py: notebooks two at a time, each kernel on its threads, readers after what they read."""

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


def _notebook(path: Path, source: str) -> Path:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_two_notebooks_run_at_once_and_a_reader_waits(tmp_path, monkeypatch):
    folder = tmp_path / "meet"
    folder.mkdir()
    paths = [_notebook(tmp_path / "a.ipynb", MEETS.format(folder=str(folder), me="a", other="c")),
             _notebook(tmp_path / "b.ipynb", READS.format(folder=str(folder))),
             _notebook(tmp_path / "c.ipynb", MEETS.format(folder=str(folder), me="c", other="a"))]
    monkeypatch.setattr(run_course, "NEEDS", {"b.ipynb": "*"})
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["run_course.py", *map(str, paths), "--jobs", "2",
                                      "--scratch", str(tmp_path / "out")])
    run_course.main()
    assert (folder / "a.started").read_text() == (folder / "c.started").read_text() == "1"
    report = json.loads((tmp_path / "out" / "course_times.json").read_text())
    assert sorted(report["notebooks"]) == ["a.ipynb", "b.ipynb", "c.ipynb"]
    assert {entry["notebooks_at_once"] for entry in report["notebooks"].values()} == {2}
    assert "last_whole_run" not in report  # named notebooks are not the whole course
    assert all((tmp_path / "out" / "notebooks" / path.name).exists() for path in paths)


def test_readiness_follows_needs(monkeypatch):
    monkeypatch.setattr(run_course, "NEEDS", {"z.ipynb": "*", "y.ipynb": ("x.ipynb",)})
    x, y, z, w = (Path(f"{name}.ipynb") for name in "xyzw")
    assert run_course.ready(x, [x, y, z], [])
    assert not run_course.ready(y, [y], [x])  # x still running
    assert run_course.ready(y, [y, z], [w])
    assert not run_course.ready(z, [z], [w])  # "*": after every other notebook
    assert run_course.ready(z, [z], [])


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
    paths = [_notebook(tmp_path / "a.ipynb", "raise RuntimeError('broken on purpose')"),
             _notebook(tmp_path / "b.ipynb", "print('never')")]
    monkeypatch.setattr(run_course, "NEEDS", {"b.ipynb": ("a.ipynb",)})
    monkeypatch.setattr(run_course, "ROOT", tmp_path)  # build/failed/ goes here
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", *map(str, paths), "--jobs", "2",
                                      "--scratch", str(tmp_path / "out")])
    with pytest.raises(run_course.CellExecutionError, match="broken on purpose"):
        run_course.main()
    assert (tmp_path / "build" / "failed" / "a.ipynb").exists()
    assert not (tmp_path / "out" / "notebooks" / "b.ipynb").exists()


def test_a_pair_waiting_for_each_other_is_refused(tmp_path, monkeypatch):
    paths = [_notebook(tmp_path / f"{name}.ipynb", "pass") for name in "ab"]
    monkeypatch.setattr(run_course, "NEEDS", {"a.ipynb": ("b.ipynb",), "b.ipynb": ("a.ipynb",)})
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setattr(sys, "argv", ["run_course.py", *map(str, paths), "--scratch", str(tmp_path / "out")])
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
