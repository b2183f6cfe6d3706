"""The analysis command on checkpoints made here, checked against an independent computation."""

import csv

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from lowrank.analyze import main
from tests.conftest import make_tiny_distilbert


def independent_dm_dd(weight: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """ΔM and ΔD written out with NumPy loops over output rows."""
    dm, dd = [], []
    for row, row0 in zip(weight, base):
        dm.append(abs(np.sqrt((row ** 2).sum()) - np.sqrt((row0 ** 2).sum())))
        dd.append(1 - row @ row0 / (np.sqrt((row ** 2).sum()) * np.sqrt((row0 ** 2).sum())))
    return float(np.mean(dm)), float(np.mean(dd))


@pytest.fixture
def checkpoints(tmp_path):
    base = make_tiny_distilbert(seed=0)
    base.save_pretrained(tmp_path / "base")
    folders = []
    for step in (1, 2):
        tuned = make_tiny_distilbert(seed=0)
        with torch.no_grad():
            for layer in tuned.distilbert.transformer.layer:
                layer.attention.q_lin.weight.mul_(1 + 0.05 * step).add_(0.02 * step * torch.randn_like(layer.attention.q_lin.weight))
        tuned.save_pretrained(tmp_path / f"full-{step}")
        folders.append(tmp_path / f"full-{step}")
    adapted = get_peft_model(make_tiny_distilbert(seed=0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin"], use_dora=True))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    adapted.save_pretrained(tmp_path / "peft")
    return tmp_path, folders, tmp_path / "peft"


def test_csv_matches_an_independent_computation(checkpoints, capsys):
    root, folders, peft_folder = checkpoints
    out = root / "out"
    assert main(["--base", str(root / "base"), "--checkpoint", *map(str, folders), str(peft_folder),
                 "--modules", r"q_lin$", "--steps", "10", "20", "30", "--out", str(out)]) == 0
    assert "Pearson" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "points.csv").open()))
    assert len(rows) == 3 * 2 and (out / "dm_dd.png").stat().st_size > 1000
    base = make_tiny_distilbert(seed=0)
    from transformers import AutoModelForSequenceClassification
    from peft import PeftModel

    merged_peft = PeftModel.from_pretrained(make_tiny_distilbert(seed=0), str(peft_folder)).merge_and_unload()
    models = {10: AutoModelForSequenceClassification.from_pretrained(folders[0]),
              20: AutoModelForSequenceClassification.from_pretrained(folders[1]), 30: merged_peft}
    for row in rows:
        weight = models[int(row["step"])].get_submodule(row["module"]).weight.detach().numpy().astype(np.float64)
        base_weight = base.get_submodule(row["module"]).weight.detach().numpy().astype(np.float64)
        dm, dd = independent_dm_dd(weight, base_weight)
        assert float(row["delta_m"]) == pytest.approx(dm, rel=1e-6, abs=1e-9)
        assert float(row["delta_d"]) == pytest.approx(dd, rel=1e-5, abs=1e-9)
        assert dm > 0 and dd > 0


def test_bad_input_is_refused_clearly(checkpoints, tmp_path, capsys):
    root, folders, _ = checkpoints
    cases = [
        (["--modules", "no_such_layer"], "matches no linear layer of the base"),
        (["--modules", "q_lin(["], "is not a regular expression"),
        (["--steps", "1"], "1 steps given for 2 checkpoints"),
    ]
    for extra, message in cases:
        assert main(["--base", str(root / "base"), "--checkpoint", *map(str, folders), *extra]) == 2
        assert message in capsys.readouterr().err
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=100, max_position_embeddings=32, n_layers=2, n_heads=2, dim=24, hidden_dim=32)
    DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "wider")
    assert main(["--base", str(root / "base"), "--checkpoint", str(tmp_path / "wider")]) == 2
    assert "has shape (24, 24), the base has (16, 16)" in capsys.readouterr().err
    shallow = DistilBertConfig(vocab_size=100, max_position_embeddings=32, n_layers=1, n_heads=2, dim=16, hidden_dim=32)
    DistilBertForSequenceClassification(shallow).save_pretrained(tmp_path / "shallow")
    assert main(["--base", str(root / "base"), "--checkpoint", str(tmp_path / "shallow")]) == 2
    assert "has no module 'distilbert.transformer.layer.1.attention.q_lin'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--base", str(root / "base"), "--checkpoint", str(tmp_path / "empty")]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main(["--base", str(tmp_path / "missing"), "--checkpoint", str(folders[0])]) == 2
    assert "could not load model" in capsys.readouterr().err
