"""Reading tensors and row blocks straight from safetensors files, local or (simulated) hub."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowrank.analysis.streaming import FileTensors, HubRepo, LocalFolder, locate, read_header, read_rows


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=g), "b.weight": torch.randn(4, 6, generator=g).to(torch.bfloat16),
            "c.bias": torch.randn(6, generator=g).half(), "d.weight": torch.randn(2, 2, generator=g).double(),
            "q.weight": torch.randint(0, 9, (3, 3), dtype=torch.int8)}


def test_rows_and_whole_tensors_equal_what_safetensors_loads(tmp_path, tensors):
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt", "k": "v"})
    header, metadata = read_header(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt", "k": "v"} and set(header) == set(tensors)
    loaded = load_file(tmp_path / "model.safetensors")
    for name in ("a.weight", "b.weight", "c.bias", "d.weight"):
        info = header[name]
        assert read_rows(info).dtype == loaded[name].dtype and torch.equal(read_rows(info), loaded[name])
        assert torch.equal(read_rows(info, 1, 2), loaded[name][1:2])
    with pytest.raises(ValueError, match="stored as I8; only floating-point"):
        read_rows(header["q.weight"])
    with pytest.raises(ValueError, match="out of range"):
        read_rows(header["a.weight"], 4, 9)


def test_sharded_checkpoint_reads_only_the_headers_it_needs(tmp_path, tensors):
    del tensors["q.weight"]
    names = sorted(tensors)
    weight_map = {}
    for i, name in enumerate(names):
        save_file({name: tensors[name]}, tmp_path / f"model-{i}.safetensors")
        weight_map[name] = f"model-{i}.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    store = FileTensors.model(LocalFolder(tmp_path))
    assert sorted(store.names()) == names and store._headers == {}
    assert torch.equal(store.rows("b.weight", 2, 4), tensors["b.weight"][2:4])
    assert list(store._headers) == ["model-1.safetensors"]  # one shard's header read, nothing else
    assert store.shape("a.weight") == (5, 3) and store.dtype("b.weight") == "BF16"
    store.close()
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(ValueError, match="shard 'model-2.safetensors' listed in model.safetensors.index.json is missing"):
        store.shape("c.bias")


def test_damaged_files_are_refused(tmp_path, tensors):
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    data = path.read_bytes()
    for cut, message in ((4, "shorter than its header length"), (60, "truncated or not a safetensors"),
                         (len(data) - 3, "is truncated: tensor")):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=message):
            read_header(path)
    path.write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(ValueError, match="header is not JSON"):
        read_header(path)


def test_locations(tmp_path):
    assert isinstance(locate(tmp_path), LocalFolder)
    assert locate("meta-llama/Llama-2-7b-hf@main") == HubRepo("meta-llama/Llama-2-7b-hf", "main")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file; give the folder"):
        locate(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="not an existing folder, nor a hub repository id"):
        locate(str(tmp_path / "missing"))


def test_hub_name_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"neither a local folder nor in the hub cache.*HF_HUB_OFFLINE=1.*'embedded'"):
        FileTensors.model(HubRepo("nobody-here/no-such-model-for-lowrank"))


def test_hub_downloads_only_the_shards_read(tmp_path, tensors, monkeypatch):
    """With the hub reachable (simulated), only the index and the shards holding read tensors are fetched."""
    del tensors["q.weight"]
    repo = tmp_path / "repo"
    repo.mkdir()
    weight_map = {name: f"model-{i}.safetensors" for i, name in enumerate(sorted(tensors))}
    for name, file in weight_map.items():
        save_file({name: tensors[name]}, repo / file)
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fetched = []

    def fake_download(repo_id, filename, revision=None, **_):
        from huggingface_hub.errors import EntryNotFoundError

        fetched.append(filename)
        if not (repo / filename).is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        target = tmp_path / "cache" / filename
        target.parent.mkdir(exist_ok=True)
        shutil.copy(repo / filename, target)
        return str(target)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    store = FileTensors.model(HubRepo("org/model"))
    assert torch.equal(store.rows("d.weight"), tensors["d.weight"])
    assert fetched == ["model.safetensors.index.json", "model-3.safetensors"]
    assert HubRepo("org/model").file("config.json") is None
    assert Path(HubRepo("org/model").file("model-0.safetensors")).is_file()
