"""The adapter file format: names, the configuration fields, per-tensor digests, and reading/writing one file.

Nothing here imports the layers, PEFT or xxhash at import time, so :mod:`lowrank.analysis` can read the
format's names without loading the rest.

A save is one safetensors file whose metadata holds the configuration; ``adapter_config.json`` beside it
is a readable copy. Only tensors are written, never pickles: loading a file cannot run code. As PEFT's
``adapter_config.json`` does, the configuration says everything needed to rebuild the model: method,
rank, alpha, **the scaling rule**, dropout, targets and **the trained head**.

* **Silent corruption**: safetensors has no checksum, so every save records a digest of each tensor's
  dtype, shape and bytes in the file's metadata, and every load checks it and refuses a mismatch,
  naming the tensor. Files without digests (older saves, PEFT's own files) still load, with a one-line
  notice. The digest is XXH3-128 (``xxhash``, installed with ``datasets``), not SHA-256: it lives in the
  file it checks, so it can only ever catch accidental damage, never tampering, and for that a
  non-cryptographic 128-bit hash is as good and faster (measured by ``bench/persistence_bench.py``).
* **A crash mid-save**: see :mod:`lowrank.adapter_files.atomic`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lowrank.adapter_files.atomic import notify, replace_pair

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
PAIRED_FIELDS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "modules_to_save",
                 "use_rslora")

#: The scaling rules a file can record (``LoRALinear.scaling`` from alpha and rank). Files without the
#: field are older saves, all made with ``alpha/rank``. ``alpha/sqrt(rank)`` is PEFT's ``use_rslora``.
SCALING_RULES = {"alpha/rank": lambda alpha, rank: alpha / rank,
                 "alpha/sqrt(rank)": lambda alpha, rank: alpha / math.sqrt(rank)}
DEFAULT_SCALING_RULE = "alpha/rank"

#: PEFT options whose merge is not ``W0 + s·B·A`` (or DoRA's): refused rather than misread.
UNSUPPORTED_PEFT_OPTIONS = ("use_qalora", "use_bdlora", "alora_invocation_tokens", "velora_config",
                            "monteclora_config", "kasa_config", "arrow_config", "target_parameters",
                            "layer_replication", "megatron_config")
#: PEFT initialisations that rewrite the base weights: the saved factors are relative to another W0, so
#: applying them to the pretrained model gives a wrong model without an error. (EVA only chooses ``A``:
#: its W0 is the pretrained one.)
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")


def scaling_rule(rank: int, alpha: float, scaling: float) -> str:
    """The name in :data:`SCALING_RULES` that gives ``scaling`` from ``alpha`` and ``rank``.

    Raises ``ValueError`` for a value no rule gives: a file could not say how to rebuild it.
    """
    for name, rule in SCALING_RULES.items():  # alpha/rank first: at rank 1 both rules agree
        if math.isclose(scaling, rule(alpha, rank), rel_tol=1e-9):
            return name
    raise ValueError(f"scaling={scaling:g} is neither alpha/rank ({alpha / rank:g}) nor alpha/sqrt(rank) "
                     f"({alpha / math.sqrt(rank):g}) for rank={rank}, alpha={alpha:g}: no adapter file (ours or "
                     "PEFT's) can record it; set alpha so that one of these rules gives the scaling you want")


def scaling_of(config: Mapping[str, Any], rank: int | None = None, alpha: float | None = None) -> float:
    """The scaling a configuration records (its ``scaling_rule``, default ``alpha/rank``)."""
    rule = config.get("scaling_rule", DEFAULT_SCALING_RULE)
    if rule not in SCALING_RULES:
        raise ValueError(f"scaling_rule {rule!r} is not one of {sorted(SCALING_RULES)}")
    return SCALING_RULES[rule](float(config["alpha"] if alpha is None else alpha),
                               int(config["rank"] if rank is None else rank))


def refuse_base_changing_init(config: Mapping[str, Any], where: str) -> None:
    """Refuse a PEFT configuration whose initialisation rewrote the base weights (:data:`BASE_CHANGING_INITS`)."""
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(BASE_CHANGING_INITS):
        raise ValueError(f"{where} was initialised with init_lora_weights={config['init_lora_weights']!r}, which "
                         "rewrites the base weights, so its factors are not relative to the pretrained model; save it "
                         "with save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA")


# ---------------------------------------------------------------------------------------------
# Tensor files with digests

def tensor_digest(tensor: torch.Tensor) -> str:
    """XXH3-128 (hex) of a tensor's dtype, shape and bytes, as stored in a safetensors file."""
    import xxhash  # here, not at the top: readers of the format's names need no hashing

    digest = xxhash.xxh3_128(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """:func:`tensor_digest` of every tensor, by name."""
    return {name: tensor_digest(tensor) for name, tensor in tensors.items()}


def write_adapter_files(folder: Path, tensors_file: str, tensors: Mapping[str, torch.Tensor],
                        metadata: Mapping[str, str], config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` (with ``metadata`` and their digests) and ``adapter_config.json`` as one crash-safe
    save (:func:`lowrank.adapter_files.atomic.replace_pair`); return the tensors file."""
    from safetensors.torch import save_file

    tensors_path = folder / tensors_file
    full = {**metadata, DIGEST_KEY: json.dumps(tensor_digests(tensors), sort_keys=True)}
    replace_pair(tensors_path, folder / CONFIG_FILE,
                 lambda staged: save_file(dict(tensors), str(staged), metadata=full),
                 json.dumps(config, indent=2, sort_keys=True) + "\n")
    return tensors_path


def _verify(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Refuse tensors that differ from their recorded digests; a one-line notice where none are recorded."""
    if DIGEST_KEY not in metadata:
        notify(f"{path} carries no tensor digests (an older save, or another tool's file): loading it "
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

