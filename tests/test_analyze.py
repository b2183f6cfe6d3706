"""``python -m lowrank.analyze`` on checkpoints written by save_pretrained, PEFT, save_adapters and a Trainer.

Every number of the CSV is compared with a NumPy computation of eq. 3-4 over output rows, on the
tensors read back from the files with safetensors' own loader and merged with NumPy.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from lowrank import add_adapters, save_adapters
from lowrank.analysis.command import analyze_checkpoints, main, parse_run
from lowrank.analysis.checkpoints import align, find_run, same_model
from tests.conftest import make_tiny_distilbert
from tests.numpy_reference import dm_dd, merged

Q = "distilbert.transformer.layer.{}.attention.q_lin"
V = "distilbert.transformer.layer.{}.attention.v_lin"


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``folder`` (shards included), by safetensors' loader."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def numpy_of(tensor: torch.Tensor) -> np.ndarray:
    return tensor.double().numpy()


def rows_of(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "points.csv").open()))


def fine_tune(seed: int, step: int, model=None):
    """A copy of the tiny model with every matrix scaled and nudged, as a short fine-tune would."""
    model = model or make_tiny_distilbert(seed=0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(1 + 0.02 * step).add_(0.003 * step * torch.randn(parameter.shape, generator=generator))
    return model


def randomise_adapters(model, seed: int) -> None:
    """Give the adapter factors (and DoRA magnitudes) values a few training steps could have reached."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
            elif "magnitude" in name:
                parameter.mul_(1 + 0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    make_tiny_distilbert(seed=0).save_pretrained(root / "base")
    fine_tune(1, 1).save_pretrained(root / "ft-1")
    fine_tune(2, 2).save_pretrained(root / "ft-2", max_shard_size="20KB")  # sharded, with an index
    return root


def test_full_checkpoints_single_and_sharded_match_numpy(root, capsys):
    assert (root / "ft-2" / "model.safetensors.index.json").is_file()
    out = root / "out-full"
    assert main(["--base", str(root / "base"), "--checkpoint", str(root / "ft-1"), str(root / "ft-2"),
                 "--steps", "10", "20", "--modules", "(q_lin|v_lin)$", "--out", str(out), "--bootstrap", "100"]) == 0
    captured = capsys.readouterr()
    assert "within checkpoints" in captured.out and "ΔM/ΔD" in captured.err  # correlations and the progress bar
    rows = rows_of(out)
    assert list(rows[0]) == ["run", "method", "module", "layer", "step", "delta_m", "delta_d"]
    assert len(rows) == 2 * 4 and {r["method"] for r in rows} == {"full"} and {r["run"] for r in rows} == {"fine-tuned"}
    base = tensors_of(root / "base")
    for row in rows:
        tuned = tensors_of(root / ("ft-1" if row["step"] == "10" else "ft-2"))
        name = row["module"] + ".weight"
        dm, dd = dm_dd(numpy_of(tuned[name]), numpy_of(base[name]))
        assert float(row["delta_m"]) == pytest.approx(dm, rel=1e-9) and float(row["delta_d"]) == pytest.approx(dd, rel=1e-9)
        assert int(row["layer"]) == int(row["module"].split(".")[3])
    for figure in ("dm_dd.png", "dm_dd.pdf"):
        assert (out / figure).stat().st_size > 1000
    correlations = list(csv.DictReader((out / "correlations.csv").open()))
    assert {(c["statistic"], c["kind"]) for c in correlations} >= {("pooled", "pearson"), ("within checkpoints", "spearman")}


def _peft_adapter(root: Path, name: str, **config) -> Path:
    model = get_peft_model(make_tiny_distilbert(seed=0), LoraConfig(target_modules=["q_lin", "v_lin"], **config))
    randomise_adapters(model, seed=len(name))
    model.save_pretrained(root / name)
    return root / name


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_adapters_rslora_and_patterns_match_numpy_and_peft(root, use_dora):
    """rsLoRA scales by alpha/√r; rank_pattern and alpha_pattern set r and alpha per module, as PEFT matches them."""
    config = dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"layer.1.attention.q_lin": 2},
                  alpha_pattern={"v_lin": 3}, use_dora=use_dora)
    folder = _peft_adapter(root, f"peft-{use_dora}", **config)
    points = analyze_checkpoints(str(root / "base"), [folder], r"(q_lin|v_lin)$", progress=False)
    base, adapter = tensors_of(root / "base"), tensors_of(folder)
    merged_by_peft = PeftModel.from_pretrained(make_tiny_distilbert(seed=0), str(folder)).merge_and_unload()
    scalings = {Q.format(0): 8 / 2, Q.format(1): 8 / math.sqrt(2), V.format(0): 3 / 2, V.format(1): 3 / 2}
    assert len(points) == 4 and {p.method for p in points} == {"dora" if use_dora else "lora"}
    for point in points:
        key = "base_model.model." + point.module
        magnitude = numpy_of(adapter[key + ".lora_magnitude_vector"]) if use_dora else None
        w0 = numpy_of(base[point.module + ".weight"])
        weight = merged(w0, numpy_of(adapter[key + ".lora_A.weight"]), numpy_of(adapter[key + ".lora_B.weight"]),
                        scalings[point.module], magnitude)
        assert (point.delta_m, point.delta_d) == pytest.approx(dm_dd(weight, w0), rel=1e-9)
        by_peft = dm_dd(numpy_of(merged_by_peft.get_submodule(point.module).weight.detach()), w0)
        assert (point.delta_m, point.delta_d) == pytest.approx(by_peft, rel=2e-4, abs=1e-7)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_save_adapters_folders_match_numpy(root, method):
    model = add_adapters(make_tiny_distilbert(seed=0), ["q_lin", "v_lin"], method=method, rank=3, alpha=6)
    randomise_adapters(model, seed=3)
    save_adapters(model, root / f"mine-{method}")
    points = analyze_checkpoints(str(root / "base"), [root / f"mine-{method}"], r"v_lin$", progress=False)
    base, adapter = tensors_of(root / "base"), tensors_of(root / f"mine-{method}")
    assert [p.method for p in points] == [method, method]
    for point in points:
        w0 = numpy_of(base[point.module + ".weight"])
        magnitude = numpy_of(adapter[point.module + ".magnitude"]) if method == "dora" else None
        weight = merged(w0, numpy_of(adapter[point.module + ".lora_A"]), numpy_of(adapter[point.module + ".lora_B"]),
                        6 / 3, magnitude)
        assert (point.delta_m, point.delta_d) == pytest.approx(dm_dd(weight, w0), rel=1e-9)


def test_embedded_base_is_the_course_model():
    """``--base embedded`` reads the course's backbone under its DistilBERT names (save_adapters of it line up)."""
    from lowrank import load_backbone
    from lowrank.analysis.checkpoints import open_base

    model, _ = load_backbone("embedded")
    base = open_base("embedded")
    name = Q.format(3) + ".weight"
    assert torch.equal(base.tensors.rows(name), model.get_submodule(Q.format(3)).weight)


def _trainer_run(folder: Path, checkpoints: dict[int, object]) -> Path:
    for step, write in checkpoints.items():
        write(folder / f"checkpoint-{step}")
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_trainer_runs_side_by_side(root, capsys):
    """Three Trainer output_dirs → one CSV with a run column and a three-panel figure; steps from checkpoint-N."""
    base_model = lambda: make_tiny_distilbert(seed=0)  # noqa: E731
    ft = _trainer_run(root / "runs" / "ft", {s: fine_tune(s, s / 10).save_pretrained for s in (5, 10, 20)})
    (ft / "model.safetensors").write_bytes((ft / "checkpoint-20" / "model.safetensors").read_bytes())
    (ft / "trainer_state.json").write_text(json.dumps({"global_step": 25}))  # the final model, saved at step 25

    def peft_writer(use_dora, seed):
        def write(folder):
            # from_pretrained(base) records the base folder in the adapter configuration
            from transformers import AutoModelForSequenceClassification

            model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(root / "base"),
                                   LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin"], use_dora=use_dora))
            randomise_adapters(model, seed)
            model.save_pretrained(folder)
        return write

    lora = _trainer_run(root / "runs" / "lora", {s: peft_writer(False, s) for s in (4, 8)})
    dora = _trainer_run(root / "runs" / "dora", {s: peft_writer(True, s) for s in (4, 8)})
    assert [s for s, _ in find_run(ft)] == [5, 10, 20, 25]
    out = root / "out-runs"
    assert main(["--base", str(root / "base"), "--run", f"ft={ft}", f"lora={lora}", f"dora={dora}",
                 "--modules", "q_lin$", "--out", str(out), "--formats", "png", "svg", "--bootstrap", "50",
                 "--no-progress"]) == 0
    rows = rows_of(out)
    assert [(r["run"], r["method"], r["step"]) for r in rows[::2]] == [
        ("ft", "full", "5"), ("ft", "full", "10"), ("ft", "full", "20"), ("ft", "full", "25"),
        ("lora", "lora", "4"), ("lora", "lora", "8"), ("dora", "dora", "4"), ("dora", "dora", "8")]
    assert rows[6:8] == [dict(r, step="25") for r in rows[4:6]]  # the final model is checkpoint-20's weights
    assert (out / "dm_dd.svg").read_text().count("r = ") >= 3  # one titled panel per run
    # Without --base, each adapter run uses the base its adapter_config.json records.
    capsys.readouterr()
    assert main(["--run", f"lora={lora}", f"dora={dora}", "--modules", "q_lin$", "--out", str(out / "again"),
                 "--bootstrap", "10", "--no-progress"]) == 0
    assert rows_of(out / "again") == rows[8:]


def test_run_labels_and_alignment(tmp_path):
    (tmp_path / "my-run" / "checkpoint-30").mkdir(parents=True)
    (tmp_path / "my-run" / "checkpoint-4").mkdir()
    assert parse_run(str(tmp_path / "my-run")).label == "my-run"
    assert parse_run(f"lora={tmp_path / 'my-run'}").checkpoints == (
        (4, str(tmp_path / "my-run" / "checkpoint-4")), (30, str(tmp_path / "my-run" / "checkpoint-30")))
    assert same_model("meta-llama/Llama-2-7b-hf", "/data/models/llama-2-7b-hf/")
    assert same_model("org/name", "/root/.cache/huggingface/hub/models--org--name/snapshots/0123abc")
    assert not same_model("org/name", "org/other")
    base = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert align(base, ["base_model.model." + b for b in base]) == {b: "base_model.model." + b for b in base}
    assert align(base, [b[len("model."):] for b in base]) == {b: b[len("model."):] for b in base}
    assert align(base, base[:1] + ["x.model.layers.1.self_attn.q_proj"]) == {base[0]: base[0]}


# --------------------------------------------------------------------------------------------
# Other architectures: any 2-D *.weight whose name matches, no model class needed


def _architectures():
    from transformers import (BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM, ViTConfig, ViTModel)

    return {
        # grouped-query attention: k_proj/v_proj are [8, 16], q_proj [16, 16]
        "llama": (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=2, num_attention_heads=2,
                                                       num_key_value_heads=1)), r"(q_proj|v_proj)$", 4),
        "bart": (lambda: BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1,
                                                                 decoder_layers=1, encoder_attention_heads=2,
                                                                 decoder_attention_heads=2, encoder_ffn_dim=32,
                                                                 decoder_ffn_dim=32, max_position_embeddings=32)),
                 r"q_proj$", 3),  # encoder self-attention, decoder self- and cross-attention
        "vit": (lambda: ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=32, image_size=8, patch_size=4)), r"attention\.query$", 2),
        # fused query/key/value in one Conv1D stored [in, out] = [16, 48]: each output feature is a column
        "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)),
                 r"c_attn$", 2),
    }


@pytest.mark.parametrize("arch", ["llama", "bart", "vit", "gpt2"])
def test_other_architectures_full_and_peft(tmp_path, arch):
    build, pattern, count = _architectures()[arch]
    torch.manual_seed(0)
    base = build()
    base.save_pretrained(tmp_path / "base")
    tuned = fine_tune(1, 1, build_like(build, base))
    tuned.save_pretrained(tmp_path / "tuned")
    transposed = arch == "gpt2"
    flags = ["--fan-in-fan-out"] if transposed else []
    assert main(["--base", str(tmp_path / "base"), "--checkpoint", str(tmp_path / "tuned"), "--modules", pattern,
                 "--out", str(tmp_path / "out"), "--bootstrap", "10", "--no-progress", *flags]) == 0
    rows, w0s, tuned_tensors = rows_of(tmp_path / "out"), tensors_of(tmp_path / "base"), tensors_of(tmp_path / "tuned")
    assert len(rows) == count
    orient = (lambda t: numpy_of(t).T) if transposed else numpy_of
    for row in rows:
        name = row["module"] + ".weight"
        name_tuned = name if name in tuned_tensors else name.removeprefix("model.")
        expected = dm_dd(orient(tuned_tensors[name_tuned]), orient(w0s[name]))
        assert (float(row["delta_m"]), float(row["delta_d"])) == pytest.approx(expected, rel=1e-9)
    # PEFT LoRA on the same modules (fan_in_fan_out for GPT-2's Conv1D, read from adapter_config.json)
    # transformers 5 names ViT's query `layers.N.attention.q_proj` in the model (so in PEFT's adapter) but writes
    # it as `encoder.layer.N.attention.attention.query` in the files: the analysis maps one onto the other.
    targets = {"llama": ["q_proj", "v_proj"], "bart": ["q_proj"], "vit": ["q_proj"], "gpt2": ["c_attn"]}[arch]
    peft_model = get_peft_model(build_like(build, base), LoraConfig(r=2, lora_alpha=2, target_modules=targets,
                                                                   fan_in_fan_out=transposed))
    randomise_adapters(peft_model, seed=5)
    peft_model.save_pretrained(tmp_path / "adapter")
    points = analyze_checkpoints(str(tmp_path / "base"), [tmp_path / "adapter"], pattern, progress=False)
    adapter = tensors_of(tmp_path / "adapter")
    assert len(points) == count
    if arch == "vit":  # the model's name matches as well as the file's
        assert analyze_checkpoints(str(tmp_path / "base"), [tmp_path / "adapter"], "q_proj$", progress=False) == points
    for point in points:
        module = f"layers.{point.layer}.attention.q_proj" if arch == "vit" else point.module
        key = next(k[: -len(".lora_A.weight")] for k in adapter if k.endswith(module + ".lora_A.weight"))
        w0 = orient(w0s[point.module + ".weight"])
        weight = merged(w0, numpy_of(adapter[key + ".lora_A.weight"]), numpy_of(adapter[key + ".lora_B.weight"]), 1.0)
        assert (point.delta_m, point.delta_d) == pytest.approx(dm_dd(weight, w0), rel=1e-9)


def build_like(build, base):
    """A fresh model with ``base``'s weights."""
    model = build()
    model.load_state_dict(base.state_dict())
    return model


# --------------------------------------------------------------------------------------------
# Clear refusals


def _error(capsys, *argv) -> str:
    assert main([*argv, "--no-progress", "--bootstrap", "10"]) == 2
    return capsys.readouterr().err


def test_bad_arguments_are_refused_clearly(root, capsys):
    base, ft = str(root / "base"), [str(root / "ft-1"), str(root / "ft-2")]
    assert "matches no weight of the base" in _error(capsys, "--base", base, "--checkpoint", *ft, "--modules", "nope")
    assert "modules end with: " in _error(capsys, "--base", base, "--checkpoint", *ft, "--modules", "nope")
    assert "q_lin, sa_layer_norm, v_lin" in _error(capsys, "--base", base, "--checkpoint", *ft, "--modules", "nope")
    assert "is not a regular expression" in _error(capsys, "--base", base, "--checkpoint", *ft, "--modules", "q(")
    assert "matches only weights that are not 2-D" in _error(capsys, "--base", base, "--checkpoint", *ft,
                                                            "--modules", "LayerNorm")
    assert "1 steps given for 2 checkpoints" in _error(capsys, "--base", base, "--checkpoint", *ft, "--steps", "1")
    assert "not an existing folder, nor a hub repository id" in _error(capsys, "--base", str(root / "nowhere"),
                                                                      "--checkpoint", ft[0])
    assert "the hub cannot be reached" in _error(capsys, "--base", "nobody-here/no-such-model", "--checkpoint", ft[0])
    assert "give --base; its checkpoints do not record a base" in _error(capsys, "--checkpoint", ft[0])
    with pytest.raises(SystemExit):
        main(["--run", ft[0], "--steps", "3"])


def test_checkpoints_that_do_not_fit_are_refused_clearly(root, tmp_path, capsys):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    base = str(root / "base")
    small = dict(vocab_size=100, max_position_embeddings=32, n_heads=2, hidden_dim=32)
    DistilBertForSequenceClassification(DistilBertConfig(n_layers=2, dim=24, **small)).save_pretrained(tmp_path / "wide")
    assert "the checkpoint's weight has shape (24, 24), the base's (16, 16)" in _error(
        capsys, "--base", base, "--checkpoint", str(tmp_path / "wide"), "--modules", "q_lin$")
    DistilBertForSequenceClassification(DistilBertConfig(n_layers=1, dim=16, **small)).save_pretrained(tmp_path / "one")
    assert f"has no tensor '{Q.format(1)}.weight'" in _error(capsys, "--base", base, "--checkpoint",
                                                             str(tmp_path / "one"), "--modules", "q_lin$")
    make_tiny_distilbert(seed=7).save_pretrained(tmp_path / "other-seed")  # same shapes, another model
    message = _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "other-seed"), "--modules", "q_lin$")
    assert "does not look fine-tuned from the base" in message and "--any-base" in message
    assert main(["--base", base, "--checkpoint", str(tmp_path / "other-seed"), "--modules", "q_lin$", "--any-base",
                 "--out", str(tmp_path / "out"), "--no-progress", "--bootstrap", "10"]) == 0
    (tmp_path / "empty").mkdir()
    assert "neither a model checkpoint" in _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "empty"))
    (tmp_path / "pickled").mkdir()
    torch.save({}, tmp_path / "pickled" / "pytorch_model.bin")
    assert "only pickled PyTorch weights" in _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "pickled"))
    (tmp_path / "cut").mkdir()
    data = (root / "ft-1" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "is truncated" in _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "cut"))
    (tmp_path / "int8").mkdir()
    save_file({Q.format(i) + ".weight": torch.ones(16, 16, dtype=torch.int8) for i in (0, 1)},
              tmp_path / "int8" / "model.safetensors")
    assert "is stored as I8" in _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "int8"),
                                       "--modules", "q_lin$", "--any-base")
    config = json.loads((root / "base" / "config.json").read_text())
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "model.safetensors").write_bytes(data)
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "is a model_type 'bert' model, the base" in _error(capsys, "--base", base, "--checkpoint",
                                                              str(tmp_path / "bert"))
    assert "has no checkpoint-N folders (it holds: " in _error(capsys, "--base", base, "--run", str(root / "ft-1"))
    assert "run labels must differ" in _error(capsys, "--base", base, "--run", f"a={root / 'runs' / 'ft'}",
                                              f"a={root / 'runs' / 'ft'}")


def test_adapters_that_do_not_fit_are_refused_clearly(root, tmp_path, capsys):
    base = str(root / "base")
    model = get_peft_model(make_tiny_distilbert(seed=0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_lin"]))
    model.save_pretrained(tmp_path / "only-q")
    message = _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "only-q"), "--modules", "(q_lin|v_lin)$")
    assert f"does not change '{V.format(0)}' (and 1 more)" in message and "modules ending with: q_lin" in message
    config = json.loads((tmp_path / "only-q" / "adapter_config.json").read_text())
    for change, expected in (({"use_qalora": True}, "uses use_qalora=True"),
                             ({"init_lora_weights": "pissa_niter_4"}, "rewrites the base weights"),
                             ({"peft_type": "IA3"}, "only LoRA and DoRA adapters"),
                             ({"r": 3}, "has rank 2 in the file but 3 in its configuration"),
                             ({"base_model_name_or_path": "org/another-model"}, "was trained on 'org/another-model'")):
        folder = tmp_path / f"changed-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes((tmp_path / "only-q" / "adapter_model.safetensors").read_bytes())
        (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert expected in _error(capsys, "--base", base, "--checkpoint", str(folder), "--modules", "q_lin$")
    assert "is an adapter folder, not a model" in _error(capsys, "--base", str(tmp_path / "only-q"), "--checkpoint",
                                                         str(tmp_path / "only-q"))
    # lowrank layers saved inside a full checkpoint (as a Trainer does): alpha is not in the file
    adapted = add_adapters(make_tiny_distilbert(seed=0), ["q_lin"], method="lora", rank=2, alpha=4)
    randomise_adapters(adapted, seed=1)
    adapted.save_pretrained(tmp_path / "inside")
    assert "pass --alpha" in _error(capsys, "--base", base, "--checkpoint", str(tmp_path / "inside"),
                                    "--modules", "q_lin$")
    points = analyze_checkpoints(base, [tmp_path / "inside"], "q_lin$", alpha=4, progress=False)
    saved = tensors_of(tmp_path / "inside")
    w0 = numpy_of(saved[Q.format(0) + ".base.weight"])
    weight = merged(w0, numpy_of(saved[Q.format(0) + ".lora_A"]), numpy_of(saved[Q.format(0) + ".lora_B"]), 2.0)
    assert (points[0].delta_m, points[0].delta_d) == pytest.approx(dm_dd(weight, w0), rel=1e-9)
    other = add_adapters(make_tiny_distilbert(seed=5), ["q_lin"], method="lora", rank=2, alpha=4)
    other.save_pretrained(tmp_path / "inside-other")
    assert "was not trained from this base: its frozen" in _error(
        capsys, "--base", base, "--checkpoint", str(tmp_path / "inside-other"), "--modules", "q_lin$", "--alpha", "4")
