"""Saves that survive SIGKILL at random moments, clear their debris, and loads that refuse corruption."""

from __future__ import annotations

import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file

from lowrank import add_adapters, adapter_layers
from lowrank.adapter_files.atomic import temporary_prefix
from lowrank.adapter_files.format import CONFIG_FILE, PEFT_TENSORS_FILE, TENSORS_FILE
from lowrank.adapter_files.peft_interop import export_peft, import_peft
from lowrank.adapter_files.save_load import adapter_config, load_adapters, save_adapters, trainable_tensors
from tests.conftest import make_tiny_distilbert
from tests.test_persistence import logits, trained

ROOT = Path(__file__).resolve().parent.parent

# A helper process that imports torch and lowrank once, then for each request forks a child that
# saves without pause, version after version: every trainable tensor filled with the version
# number, every adapter's alpha 1 + version % 3 (so that configuration and tensors both change).
# The child reports each finished save; the test kills it with SIGKILL; the helper reaps it.
SAVER = r"""
import os, sys
import torch
torch.set_num_threads(1)
from lowrank import add_adapters, adapter_layers
from lowrank import export_peft, save_adapters
from tests.conftest import make_tiny_distilbert

model = add_adapters(make_tiny_distilbert(), ["q_lin", "v_lin"], rank=2, alpha=1)
trainable = [p for p in model.parameters() if p.requires_grad]
write = {"save": save_adapters, "export": export_peft}
print("ready", flush=True)
for request in sys.stdin:
    mode, folder, first = request.split()
    pid = os.fork()
    if pid == 0:
        version = int(first)
        while True:
            with torch.no_grad():
                for parameter in trainable:
                    parameter.fill_(version)
            for _, layer in adapter_layers(model):
                layer.alpha = float(1 + version % 3)
                layer.scaling = layer.alpha / layer.rank  # a file records alpha and the rule, not the value
            write[mode](model, folder)
            os.write(1, f"saved {version}\n".encode())
            version += 1
    print(f"child {pid}", flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


class Saver:
    """The helper process above, with a line reader that never blocks the test for long."""

    def __init__(self, stderr: Path) -> None:
        self.stderr_path = stderr
        self._stderr = open(stderr, "w")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="default")
        self.process = subprocess.Popen([sys.executable, "-c", SAVER], cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next_line(timeout=120) == "ready", self.stderr_path.read_text()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # it exited

    def next_line(self, timeout: float = 30) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            stderr = self.stderr_path.read_text()
            raise AssertionError(f"the saving process exited or went silent; its stderr:\n{stderr}")
        return line

    def kill_mid_save(self, mode: str, folder: Path, first: int, delay: float) -> tuple[int, int]:
        """Start a saving child, let it finish one save, SIGKILL it ``delay`` s later; (last reported save, pid)."""
        self.process.stdin.write(f"{mode} {folder} {first}\n")
        self.process.stdin.flush()
        pid, saved = 0, []
        while not (pid and saved):  # its first save removed the debris before it
            word, number = self.next_line().split()
            if word == "child":
                pid = int(number)
            else:
                saved.append(int(number))
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        while (line := self.next_line()) != "reaped":
            saved.append(int(line.split()[1]))
        return max(saved), pid

    def close(self) -> None:
        self.process.kill()  # nothing of it needs to shut down cleanly
        self.process.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def saver(tmp_path_factory):
    process = Saver(tmp_path_factory.mktemp("saver") / "stderr.txt")
    yield process
    process.close()


def whole_version(model) -> int:
    """The one version number that every trainable tensor and every alpha of ``model`` agrees on."""
    values = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).unique()
    assert values.numel() == 1, f"tensors from different saves: {values.tolist()[:5]}"
    version = int(values.item())
    assert {layer.alpha for _, layer in adapter_layers(model)} == {float(1 + version % 3)}, "config of another save"
    return version


def hidden_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("mode", ["save", "export"])
def test_sigkill_at_random_moments_leaves_one_whole_save_and_only_the_last_debris(saver, tmp_path, mode):
    rng = random.Random(f"kill-{mode}")
    names = (TENSORS_FILE, CONFIG_FILE) if mode == "save" else (PEFT_TENSORS_FILE, CONFIG_FILE)
    for round_ in range(12):
        first = 1000 * (round_ + 1)
        last, pid = saver.kill_mid_save(mode, tmp_path, first, delay=rng.uniform(0.0, 0.05))
        fresh = make_tiny_distilbert()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no digest notice, no other complaint
                (load_adapters if mode == "save" else import_peft)(fresh, tmp_path)
        except ValueError as error:  # an export killed between removing the old configuration and writing the new
            assert mode == "export" and "an export was interrupted before writing its configuration" in str(error)
            with pytest.raises(ValueError, match="Can't find 'adapter_config.json'"):
                PeftModel.from_pretrained(make_tiny_distilbert(), str(tmp_path))
        else:
            assert whole_version(fresh) in (last, last + 1), f"round {round_}: neither the old nor the new save"
        leftovers = hidden_entries(tmp_path)
        prefixes = tuple(temporary_prefix(tmp_path / name, pid) for name in names)
        assert all(entry.is_dir() and entry.name.startswith(prefixes) for entry in leftovers), \
            f"round {round_}: debris other than the last kill's: {[entry.name for entry in leftovers]}"
    # Only what must hold whatever the timing: how many kills land mid-save depends on the machine's load,
    # so no count of them is asserted (test_a_crash_mid_save_keeps_the_previous_save crashes mid-save for sure).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (save_adapters if mode == "save" else export_peft)(trained("lora"), tmp_path)
    said = [str(w.message) for w in caught if "leftover temporary folder(s)" in str(w.message)]
    assert len(said) == len(leftovers), said  # one line per killed file's folder
    assert hidden_entries(tmp_path) == []
    assert "leftover temporary folder(s)" in saver.stderr_path.read_text()  # the children said so too


def make_leftover(folder: Path, prefix: str, size: int) -> Path:
    leftover = folder / f"{prefix}abcd1234.tmp"
    leftover.mkdir()
    (leftover / ".tmpAbCdEf").write_bytes(b"x" * size)  # safetensors' own temporary inside ours
    return leftover


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_only_the_debris_of_dead_saves_of_the_same_file_is_removed(tmp_path):
    target = tmp_path / TENSORS_FILE
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = dead_pid()
        removed = make_leftover(tmp_path, temporary_prefix(target, dead), 1500)
        kept = [
            make_leftover(tmp_path, temporary_prefix(target, live.pid), 100),  # a save running now
            make_leftover(tmp_path, temporary_prefix(target), 100),  # this process's own (another thread)
            make_leftover(tmp_path, temporary_prefix(tmp_path / "other.safetensors", dead), 100),  # another file
            make_leftover(tmp_path, f".{TENSORS_FILE}.another-host.{dead}.", 100),  # a save on another machine
        ]
        (tmp_path / ".tmpQwErTy").write_bytes(b"y" * 10)  # someone's temporary we cannot attribute
        said = r"removed 1 leftover temporary folder\(s\) \(1 file\(s\), 1,500 bytes\) of earlier interrupted saves of "
        with pytest.warns(UserWarning, match=said + re.escape(str(target))) as caught:
            save_adapters(trained("lora"), tmp_path)
        assert len(caught) == 1 and "\n" not in str(caught[0].message) and caught[0].filename == __file__
        assert not removed.exists()
        assert all(path.exists() for path in kept) and (tmp_path / ".tmpQwErTy").exists()
    finally:
        live.kill()
        live.wait()


def header(path: Path) -> tuple[int, dict]:
    """Start of the data section and the parsed header of a safetensors file."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return 8 + length, json.loads(raw[8: 8 + length])


@pytest.mark.parametrize("mode", ["save", "export"])
def test_a_flipped_byte_anywhere_in_the_tensor_data_is_refused_naming_the_tensor(tmp_path, mode):
    model = trained("dora")
    (save_adapters if mode == "save" else export_peft)(model, tmp_path)
    load = load_adapters if mode == "save" else import_peft
    path = tmp_path / (TENSORS_FILE if mode == "save" else PEFT_TENSORS_FILE)
    original = path.read_bytes()
    start, entries = header(path)
    rng = random.Random(0)
    for _ in range(40):
        position = rng.randrange(start, len(original))
        damaged = bytearray(original)
        damaged[position] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(damaged))
        name = next(k for k, v in entries.items() if k != "__metadata__"
                    and v["data_offsets"][0] <= position - start < v["data_offsets"][1])
        fresh = make_tiny_distilbert()
        untouched = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ValueError, match=rf"is corrupt: the bytes of tensor '{name}' differ from the digest"):
            load(fresh, tmp_path)
        assert all(torch.equal(untouched[k], v) for k, v in fresh.state_dict().items())


def test_a_header_that_changes_a_dtype_or_the_digest_record_is_refused(tmp_path):
    save_adapters(trained("lora"), tmp_path)
    path = tmp_path / TENSORS_FILE
    original = path.read_bytes()
    start, _ = header(path)
    path.write_bytes(original[:start].replace(b'"F32"', b'"I32"', 1) + original[start:])  # same size, other meaning
    with pytest.raises(ValueError, match=r"is corrupt: the bytes of tensor '.*' differ from the digest recorded"):
        load_adapters(make_tiny_distilbert(), tmp_path)
    digests_at = original.index(b'lowrank.xxh3_128":"{')
    path.write_bytes(original[:digests_at + 19] + b"[" + original[digests_at + 20:])
    with pytest.raises(ValueError, match="its record of tensor digests is damaged"):
        load_adapters(make_tiny_distilbert(), tmp_path)


def test_a_file_without_digests_still_loads_with_a_one_line_notice(tmp_path, tiny_batch):
    model = trained("dora")
    # exactly what save_adapters wrote before digests existed
    metadata = {"lowrank": json.dumps(adapter_config(model))}
    save_file(trainable_tensors(model), tmp_path / TENSORS_FILE, metadata=metadata)
    with pytest.warns(UserWarning, match="carries no tensor digests") as caught:
        fresh = load_adapters(make_tiny_distilbert(seed=0), tmp_path).eval()
    assert len(caught) == 1 and "\n" not in str(caught[0].message) and caught[0].filename == __file__
    torch.testing.assert_close(logits(fresh, tiny_batch), logits(model, tiny_batch), atol=1e-6, rtol=0)


def test_an_export_interrupted_between_its_two_files_is_refused_not_mismatched(tmp_path, monkeypatch):
    export_peft(trained("lora"), tmp_path)  # alpha 4
    replace = os.replace

    def crash_before_the_config(source, destination):
        if Path(destination).name == CONFIG_FILE:
            raise KeyboardInterrupt
        replace(source, destination)

    monkeypatch.setattr(os, "replace", crash_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        export_peft(add_adapters(make_tiny_distilbert(seed=0), ["q_lin", "v_lin"], rank=2, alpha=16), tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [PEFT_TENSORS_FILE]  # new tensors, no configuration
    with pytest.raises(ValueError, match="an export was interrupted before writing its configuration; export again"):
        import_peft(make_tiny_distilbert(seed=0), tmp_path)
    with pytest.raises(ValueError, match="Can't find 'adapter_config.json'"):
        PeftModel.from_pretrained(make_tiny_distilbert(seed=0), str(tmp_path))


def test_a_configuration_from_another_export_is_refused(tmp_path):
    export_peft(trained("lora"), tmp_path / "a")  # alpha 4
    export_peft(add_adapters(make_tiny_distilbert(seed=0), ["q_lin", "v_lin"], rank=2, alpha=16), tmp_path / "b")
    shutil.copy(tmp_path / "a" / CONFIG_FILE, tmp_path / "b" / CONFIG_FILE)
    with pytest.raises(ValueError, match=r"adapter_config.json has lora_alpha=4 but adapter_model.safetensors was "
                                         r"exported with lora_alpha=16: the two files come from different exports"):
        import_peft(make_tiny_distilbert(seed=0), tmp_path / "b")
