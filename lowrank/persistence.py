"""Keep and share adapters: safetensors save/load, PEFT export/import, and a PEFT twin in memory.

Taught in notebook 05: "Save and reload", "Export to PEFT, load with PEFT", "Import a PEFT adapter into
the from-scratch layers", "When the folder does not fit". Notebook 03, section 4, compares a model with
its PEFT twin (:func:`peft_twin`).

Only the trainable tensors are written (adapter factors, DoRA magnitudes, the trained head),
never pickles: loading a file cannot run code. A save is one safetensors file whose metadata
holds the configuration; ``adapter_config.json`` beside it is a readable copy.

What a save survives, and what a load refuses:

* **A crash mid-save** (even SIGKILL) leaves the previous save whole: both files are written into
  private temporary folders beside them, ``.<file>.<host>.<pid>.<random>.tmp``, flushed, then renamed
  into place (see :func:`write_adapter_files`). A killed save leaves such folders behind; the next save
  of the same file removes those of processes that no longer run on this host and warns how many files
  and bytes it removed. It never touches another file's temporaries nor those of a live process.
* **Silent corruption**: safetensors has no checksum, so every save records a digest of each tensor's
  dtype, shape and bytes in the file's metadata, and every load checks it and refuses a mismatch,
  naming the tensor. Files without digests (older saves, PEFT's own files) still load, with a one-line
  notice. The digest is XXH3-128 (``xxhash``, installed with ``datasets``), not SHA-256: it lives in the
  file it checks, so it can only ever catch accidental damage, never tampering, and for that a
  non-cryptographic 128-bit hash is as good and about ten times faster (``bench/persistence_bench.py``).
* **A torn pair**: the configuration is renamed into place last, after the old one was removed, so a
  crash never leaves ``adapter_config.json`` from one save beside tensors of another (PEFT would load
  them with the wrong rank or alpha). An exported ``adapter_model.safetensors`` also records the
  configuration values it belongs with, and :func:`import_peft` refuses a configuration that differs.
* **Other settings**: loading into a model that already has adapters refuses any difference in
  method, rank, alpha, dropout or targets, naming the field and both values. Another backbone of
  another size is refused at the first tensor whose shape differs; the recorded backbone name is
  not compared.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lowrank.adapters import add_adapters, adapter_layers
from lowrank.dora import DoRALinear
from lowrank.lora import LoRALinear

TENSORS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_TENSORS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
FORMAT = "lowrank-adapters/1"
REQUIRED_FIELDS = ("format", "method", "rank", "alpha", "dropout", "targets")
#: Metadata key of the per-tensor digests (a JSON object: tensor name -> XXH3-128 hex digest).
DIGEST_KEY = "lowrank.xxh3_128"
#: Metadata key, in an exported ``adapter_model.safetensors``, of the configuration values it belongs with.
PAIR_KEY = "lowrank.peft_config"
#: The PEFT configuration fields that decide how the tensors load; recorded beside the tensors.
PAIRED_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "modules_to_save")

# ---------------------------------------------------------------------------------------------
# Atomic writes, and the debris that killed ones leave behind

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TEMPORARY_TAIL = re.compile(r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")


def temporary_prefix(target: Path, pid: int | None = None) -> str:
    """Name prefix of the temporary folders that saves of ``target`` by process ``pid`` (default: this one) use."""
    return f".{target.name}.{_HOST}.{os.getpid() if pid is None else pid}."


def _notify(message: str) -> None:
    """Warn with ``message``, attributed to the first caller outside this module."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; ``True`` whenever it cannot be told."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _leftovers(target: Path) -> list[Path]:
    """Temporary folders of earlier saves of ``target`` whose process is gone (same host, not this process)."""
    head = f".{target.name}."
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        match = _TEMPORARY_TAIL.fullmatch(entry.name[len(head):]) if entry.name.startswith(head) else None
        if match is None or match["host"] != _HOST or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _process_alive(pid):
            found.append(entry)
    return sorted(found)


def remove_leftovers(target: Path) -> tuple[int, int, int]:
    """Delete the debris of killed saves of ``target``; warn and return ``(folders, files, bytes)`` removed."""
    folders = _leftovers(target)
    files = size = 0
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                files += 1
                size += (Path(root) / name).stat().st_size
        shutil.rmtree(folder, ignore_errors=True)
    if folders:
        _notify(f"removed {len(folders)} leftover temporary folder(s) ({files} file(s), {size:,} bytes) of "
                f"earlier interrupted saves of {target}")
    return len(folders), files, size


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere the rename is all there is)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A path to write ``path``'s next version at, in a private temporary folder beside it.

    Clears the debris of killed saves of ``path`` first. Writers that make their own temporaries
    (safetensors' ``save_file`` does) make them inside the folder, so a killed save leaves exactly
    one folder, which the next save of ``path`` recognises by its name. The folder is removed on exit.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    workdir = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield workdir / path.name
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Tensor files with digests

def tensor_digest(tensor: torch.Tensor) -> str:
    """XXH3-128 (hex) of a tensor's dtype, shape and bytes, as stored in a safetensors file."""
    digest = xxhash.xxh3_128(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """:func:`tensor_digest` of every tensor, by name."""
    return {name: tensor_digest(tensor) for name, tensor in tensors.items()}


def write_adapter_files(folder: Path, tensors_file: str, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str], config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (with ``metadata`` and their digests) and ``adapter_config.json`` as one save.

    Both files are written and flushed to disk under temporary names first. Then the old
    configuration is removed, the tensors renamed into place, and the configuration renamed in
    last: a crash at any moment leaves the old pair, the new pair, or (for a few milliseconds'
    worth of moments) tensors without a configuration, never a configuration beside tensors of
    another save. Returns the tensors file.
    """
    tensors_path, config_path = folder / tensors_file, folder / CONFIG_FILE
    full = {**metadata, DIGEST_KEY: json.dumps(tensor_digests(tensors), sort_keys=True)}
    with _staging(tensors_path) as staged_tensors, _staging(config_path) as staged_config:
        save_file(dict(tensors), str(staged_tensors), metadata=full)
        staged_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _fsync_file(staged_tensors)
        _fsync_file(staged_config)
        config_path.unlink(missing_ok=True)
        _fsync_directory(folder)
        os.replace(staged_tensors, tensors_path)
        _fsync_directory(folder)
        os.replace(staged_config, config_path)
        _fsync_directory(folder)
    return tensors_path


def _verify(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Refuse tensors that differ from their recorded digests; a one-line notice where none are recorded."""
    if DIGEST_KEY not in metadata:
        _notify(f"{path} carries no tensor digests (an older save, or another tool's file): loading it "
                "without a corruption check; save it again to add them")
        return
    try:
        recorded = json.loads(metadata[DIGEST_KEY])
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict) or set(recorded) != set(tensors):
        raise ValueError(f"{path} is corrupt: its record of tensor digests is damaged or does not list the "
                         "tensors the file holds; restore it from a copy or save again")
    bad = [name for name in sorted(tensors) if tensor_digest(tensors[name]) != recorded[name]]
    if bad:
        more = f" (and {len(bad) - 1} other tensor(s))" if len(bad) > 1 else ""
        raise ValueError(f"{path} is corrupt: the bytes of tensor {bad[0]!r}{more} differ from the digest "
                         "recorded when it was saved (damaged on disk or in transfer); restore it from a copy "
                         "or save again")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of ``path``, refused if the file is unreadable or differs from its digests."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist: expected a folder written by save_adapters/export_peft")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is truncated or corrupt and cannot be read ({error})") from error
    _verify(path, tensors, metadata)
    return tensors, metadata


# ---------------------------------------------------------------------------------------------
# Configurations, and the check that a file's settings are the model's

def adapter_config(model: nn.Module) -> dict[str, Any]:
    """Method, rank, alpha, dropout and targets shared by all adapter layers of ``model``."""
    layers = list(adapter_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA/DoRA layers: add adapters before saving them")
    settings = {(("dora" if isinstance(l, DoRALinear) else "lora"), l.rank, l.alpha, l.dropout_p) for _, l in layers}
    if len(settings) > 1:
        raise ValueError(f"adapter layers differ in (method, rank, alpha, dropout): {sorted(settings)}; "
                         "saving and loading support one setting per model")
    method, rank, alpha, dropout = settings.pop()
    backbone = getattr(getattr(model, "config", None), "name_or_path", "") or "unknown"
    return {"format": FORMAT, "method": method, "rank": rank, "alpha": alpha, "dropout": dropout,
            "targets": [name for name, _ in layers], "backbone": str(backbone)}


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _show_targets(names: Collection[str]) -> str:
    return f"{sorted({name.rsplit('.', 1)[-1] for name in names})} ({len(names)} modules)"


def _check_settings(model: nn.Module, source: Path, method: str, rank: int, alpha: float, dropout: float,
                    targets: Collection[str]) -> None:
    """Refuse a file whose method, rank, alpha, dropout or targets differ from the adapters ``model`` has."""
    ours = adapter_config(model)
    advice = ("load into a model without adapters to take the file's settings, or add adapters with the "
              "file's settings")
    for field, theirs in (("method", method), ("rank", int(rank)), ("alpha", float(alpha)),
                          ("dropout", float(dropout))):
        if theirs != ours[field]:
            raise ValueError(f"{source}: the file has {field}={_show(theirs)} but the model's adapters have "
                             f"{field}={_show(ours[field])}; {advice}")
    mine, file = set(ours["targets"]), set(targets)
    if mine != file:
        first = min(file ^ mine)
        where = "the file" if first in file else "the model"
        raise ValueError(f"{source}: the file has targets={_show_targets(file)} but the model's adapters have "
                         f"targets={_show_targets(mine)} (first difference: {first!r}, adapted only in {where}); "
                         f"{advice}")


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad``, by qualified name, detached and contiguous on the CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: Path, required: set[str]) -> None:
    """Check every name and shape first, then copy; the model is untouched if anything mismatches."""
    parameters = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in parameters:
            raise ValueError(f"{source}: tensor {name!r} {tuple(tensor.shape)} has no counterpart in the model "
                             "(other targets, method or architecture?)")
        if parameters[name].shape != tensor.shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} in the file but "
                             f"{tuple(parameters[name].shape)} in the model (other backbone or rank?)")
    missing = sorted(required - set(tensors))
    if missing:
        raise ValueError(f"{source}: the file lacks {len(missing)} tensor(s) the model trains, first {missing[0]!r}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor.to(parameters[name].dtype))


def _fit_adapters(model: nn.Module, source: Path, config: Mapping[str, Any], adapted: Collection[str]) -> None:
    """Add the file's adapters to a model without any; check a model with adapters against the file.

    ``config`` holds method, rank, alpha, dropout and the targets to add; ``adapted`` the qualified
    names of the modules the file adapts.
    """
    if list(adapter_layers(model)):
        _check_settings(model, source, config["method"], config["rank"], config["alpha"], config["dropout"], adapted)
    else:
        add_adapters(model, list(config["targets"]), method=config["method"], rank=int(config["rank"]),
                     alpha=float(config["alpha"]), dropout=float(config["dropout"]))


# ---------------------------------------------------------------------------------------------
# The public functions

def save_adapters(model: nn.Module, folder: str | Path) -> Path:
    """Write the trainable tensors and the adapter configuration to ``folder``; return the file.

    The write is atomic (see the module docstring); it first removes what earlier killed saves of
    the same file left behind, with a warning.
    """
    folder = Path(folder)
    config = adapter_config(model)
    return write_adapter_files(folder, TENSORS_FILE, trainable_tensors(model), {"lowrank": json.dumps(config)}, config)


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a :func:`save_adapters` folder into ``model`` (adding the adapters if it has none).

    Raises:
        ValueError: a missing, truncated or corrupt file (digest mismatch, naming the tensor), or a
            file that does not fit the model's adapters (the differing setting or tensor named).
    """
    path = Path(folder) / TENSORS_FILE
    tensors, metadata = read_safetensors(path)
    if "lowrank" not in metadata:
        raise ValueError(f"{path} has no lowrank configuration in its metadata: not written by save_adapters")
    try:
        config = json.loads(metadata["lowrank"])
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the configuration in its metadata is not valid JSON ({error})") from error
    for field in REQUIRED_FIELDS:
        if field not in config:
            raise ValueError(f"{path}: configuration field {field!r} is missing")
    if config["format"] != FORMAT:
        raise ValueError(f"{path}: format {config['format']!r} is not {FORMAT!r}")
    _fit_adapters(model, path, config, config["targets"])
    _copy_into(model, tensors, path, required=set(trainable_tensors(model)))
    return model


def _head_modules(model: nn.Module) -> list[str]:
    """The top-level modules holding trainable parameters that no adapter layer holds (the head)."""
    adapted = {name for name, _ in adapter_layers(model)}
    return sorted({name.split(".")[0] for name, p in model.named_parameters()
                   if p.requires_grad and name.rpartition(".")[0] not in adapted})


def peft_config(model: nn.Module):
    """PEFT's ``LoraConfig`` for the adapters of ``model``: same method, rank, alpha, dropout and targets.

    ``target_modules`` lists the adapted modules by name (PEFT has no default target list for
    DistilBERT); the other trainable top-level modules (the classification head) become
    ``modules_to_save``. Used by :func:`export_peft` and :func:`peft_twin`.
    """
    from peft import LoraConfig

    config = adapter_config(model)
    return LoraConfig(
        r=config["rank"], lora_alpha=config["alpha"], lora_dropout=config["dropout"],
        target_modules=sorted(config["targets"]), use_dora=config["method"] == "dora",
        modules_to_save=_head_modules(model) or None, base_model_name_or_path=config["backbone"],
    )


def peft_twin(model: nn.Module, base: nn.Module) -> tuple[nn.Module, list[tuple[LoRALinear, nn.Module]]]:
    """PEFT's twin of ``model``: ``get_peft_model`` on a copy of ``base`` with :func:`peft_config` of
    ``model``, and every adapter's ``lora_A``, ``lora_B`` (and DoRA's magnitude) copied into PEFT's layer.

    ``base`` is the model before adapters were added (it is not changed). Returns the PEFT model and the
    pairs ``(our layer, PEFT's layer)``; their forward passes and gradients agree (notebook 03, section 4;
    ``tests/test_peft_equivalence.py``). The head is PEFT's copy of ``base``'s: train neither before comparing,
    or use :func:`export_peft` to carry a trained head.
    """
    from peft import get_peft_model

    config = peft_config(model)
    config.base_model_name_or_path = None  # get_peft_model records base's own (and warns if it differs)
    theirs = get_peft_model(copy.deepcopy(base), config)
    peft_layers = dict(theirs.base_model.model.named_modules())
    pairs = []
    with torch.no_grad():
        for name, layer in adapter_layers(model):
            target = peft_layers[name]
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
            if isinstance(layer, DoRALinear):
                target.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
            pairs.append((layer, target))
    return theirs, pairs


def export_peft(model: nn.Module, folder: str | Path) -> Path:
    """Write a folder that ``peft.PeftModel.from_pretrained(base, folder)`` loads (LoRA or DoRA).

    Adapter factors and DoRA magnitudes go under PEFT's key names; the other trainable modules
    (the classification head) become PEFT's ``modules_to_save`` (:func:`peft_config`). The old
    configuration is removed first and the new one written last (see the module docstring).
    """
    folder = Path(folder)
    adapted = {name for name, _ in adapter_layers(model)}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in trainable_tensors(model).items():
        module, _, leaf = name.rpartition(".")
        if module in adapted:
            key = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}[leaf]
            tensors[f"{PEFT_PREFIX}{module}.{key}"] = tensor
        else:
            tensors[PEFT_PREFIX + name] = tensor
    peft_dict = peft_config(model).to_dict()
    peft_dict = {k: (sorted(v) if isinstance(v, set) else v) for k, v in peft_dict.items()}
    paired = {field: peft_dict.get(field) for field in PAIRED_FIELDS}
    write_adapter_files(folder, PEFT_TENSORS_FILE, tensors, {"format": "pt", PAIR_KEY: json.dumps(paired)}, peft_dict)
    return folder


def _check_pair(config_path: Path, peft: Mapping[str, Any], tensors_path: Path, metadata: Mapping[str, str]) -> None:
    """Refuse a configuration that is not the one ``export_peft`` wrote with these tensors."""
    if PAIR_KEY not in metadata:
        return  # PEFT's own files and older exports record nothing to compare
    try:
        recorded = json.loads(metadata[PAIR_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{tensors_path} is corrupt: its record of the configuration is not JSON ({error})") from error

    def canonical(value: object) -> object:
        return sorted(value) if isinstance(value, list) else value

    for field, value in recorded.items():
        if canonical(peft.get(field)) != canonical(value):
            raise ValueError(f"{config_path} has {field}={_show(peft.get(field))} but {tensors_path.name} was "
                             f"exported with {field}={_show(value)}: the two files come from different exports "
                             "(an interrupted export, or files mixed by hand); export again")


def import_peft(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a PEFT LoRA/DoRA adapter folder into ``model``'s from-scratch layers.

    Raises:
        ValueError: a missing, unreadable or corrupt file, a configuration that does not belong with
            the tensors, an unsupported PEFT option, or a folder that does not fit the model's
            adapters (the differing setting or tensor named).
    """
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    tensors_path = folder / PEFT_TENSORS_FILE
    if not config_path.is_file():
        if tensors_path.is_file():
            raise ValueError(f"{config_path} does not exist beside {tensors_path.name}: an export was interrupted "
                             "before writing its configuration; export again")
        raise ValueError(f"{config_path} does not exist: not a PEFT adapter folder")
    try:
        peft = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    for field in ("peft_type", "r", "lora_alpha", "target_modules"):
        if field not in peft:
            raise ValueError(f"{config_path}: configuration field {field!r} is missing")
    if peft["peft_type"] != "LORA":
        raise ValueError(f"{config_path}: peft_type {peft['peft_type']!r} is not LORA")
    if peft.get("use_rslora") or peft.get("fan_in_fan_out") or peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise ValueError(f"{config_path}: rsLoRA, fan_in_fan_out and per-module rank/alpha patterns are not supported")
    if isinstance(peft["target_modules"], str):
        raise ValueError(f"{config_path}: target_modules is a regex ({peft['target_modules']!r}); list module names")
    config = {"method": "dora" if peft.get("use_dora") else "lora", "rank": peft["r"], "alpha": peft["lora_alpha"],
              "dropout": peft.get("lora_dropout", 0.0), "targets": peft["target_modules"]}
    raw, metadata = read_safetensors(tensors_path)
    _check_pair(config_path, peft, tensors_path, metadata)
    tensors = {}
    for key, tensor in raw.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for peft_leaf, ours in ((".lora_A.weight", ".lora_A"), (".lora_B.weight", ".lora_B"),
                                (".lora_magnitude_vector.weight", ".magnitude"), (".lora_magnitude_vector", ".magnitude")):
            if name.endswith(peft_leaf):
                name = name[: -len(peft_leaf)] + ours
                break
        tensors[name] = tensor
    adapted = {name[: -len(".lora_A")] for name in tensors if name.endswith(".lora_A")}
    _fit_adapters(model, tensors_path, config, adapted)
    adapter_tensors = {n for n in trainable_tensors(model) if n.endswith((".lora_A", ".lora_B", ".magnitude"))}
    _copy_into(model, tensors, tensors_path, required=adapter_tensors)
    return model
