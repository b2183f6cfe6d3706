"""MagnitudeDirectionCallback in real 🤗 Trainer runs: one process, two processes, and against the command."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowrank.analysis.command import main
from lowrank.analysis.callback import MagnitudeDirectionCallback, pretrained_copies
from tests import callback_job
from tests.conftest import make_tiny_distilbert

MODULES = r"(q_lin|v_lin)$"


def csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def assert_same_points(rows: list[dict], expected: list[dict], rel: float) -> None:
    assert [(r["run"], r["method"], r["module"], r["step"]) for r in rows] == \
        [(r["run"], r["method"], r["module"], r["step"]) for r in expected]
    for row, other in zip(rows, expected):
        for column in ("delta_m", "delta_d"):
            assert float(row[column]) == pytest.approx(float(other[column]), rel=rel, abs=1e-12)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("callback") / "base"
    make_tiny_distilbert(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def single_full(base) -> Path:
    out = base.parent / "full"
    callback_job.run(out, "full")
    return out


@pytest.mark.parametrize("method", ["full", "peft", "lowrank"])
def test_callback_agrees_with_the_command_on_the_runs_checkpoints(base, single_full, method, capsys):
    """The callback (live weights) and the command (the checkpoint-N the Trainer wrote) give the same CSV."""
    out = single_full if method == "full" else base.parent / method
    if method != "full":
        callback_job.run(out, method)
    recorded = csv_rows(out / "magnitude_direction" / "points.csv")
    assert [r["step"] for r in recorded] == ["2"] * 4 + ["4"] * 4
    assert {r["method"] for r in recorded} == {"full" if method == "full" else "dora"}
    assert (out / "magnitude_direction" / "dm_dd.png").stat().st_size > 1000
    alpha = ["--alpha", "4"] if method == "lowrank" else []  # a Trainer checkpoint does not record lowrank's alpha
    assert main(["--base", str(base), "--run", f"{method}={out}", "--modules", MODULES, "--out", str(out / "cli"),
                 "--bootstrap", "10", "--no-progress", *alpha]) == 0
    assert_same_points(csv_rows(out / "cli" / "points.csv"), recorded, rel=1e-9)


@pytest.mark.multiprocess
def test_two_processes_give_the_same_csv_as_one(single_full, tmp_path):
    """DDP on two CPU processes (gloo, torchrun): the main process alone measures, with one process's numbers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    job = Path(callback_job.__file__)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(job), str(tmp_path / "ddp"), "full"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "ddp" / "magnitude_direction").iterdir())
    assert written == ["correlations.csv", "dm_dd.png", "points.csv"]  # one writer: no partial or doubled files
    # Same steps, same data: equal up to the order of float32 additions in the gradient all-reduce.
    assert_same_points(csv_rows(tmp_path / "ddp" / "magnitude_direction" / "points.csv"),
                       csv_rows(single_full / "magnitude_direction" / "points.csv"), rel=1e-4)


def test_callback_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="every must be a positive number of steps"):
        MagnitudeDirectionCallback(every=0)
    model = make_tiny_distilbert()
    with pytest.raises(ValueError, match="match no weight matrix of the model; its matrices' modules end with: .*q_lin"):
        pretrained_copies(model, "nothing$")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="match 4 frozen weight"):
        pretrained_copies(model, MODULES)
