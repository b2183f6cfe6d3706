"""What a checkpoint folder holds, as one weight update per module, read without building a model.

Part of ``python -m lowrank.analyze`` (notebook A3, "Figure 2 for your own checkpoints").

Four kinds of folder are understood, each from its files alone:

* a full-weight checkpoint (``model.safetensors`` or shards with ``model.safetensors.index.json``,
  as ``save_pretrained`` and the 🤗 Trainer write them); if it holds ``lowrank`` adapter layers
  (``q_lin.lora_A``, ``q_lin.base.weight`` ...), their factors are used and ``alpha`` must be given,
  since such a file does not record it;
* a PEFT LoRA/DoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``): scaling
  ``alpha/r`` or ``alpha/√r`` (rsLoRA), per-module ``rank_pattern``/``alpha_pattern``, DoRA's
  ``lora_magnitude_vector``, ``fan_in_fan_out``, full weights of ``modules_to_save``;
* a folder written by :func:`lowrank.save_adapters` (``adapters.safetensors``);
* a 🤗 Trainer ``output_dir``: its ``checkpoint-N`` folders, ``N`` being the step (:func:`find_run`).

Module names are matched between a checkpoint and its base up to one consistent prefix
(``base_model.model.`` of PEFT, ``model.`` of a ``...ForCausalLM``, ``distilbert.`` of a classifier).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowrank.adapter_files.format import (  # the format's names only: no layers, no hashing
    CONFIG_FILE,
    FORMAT,
    PEFT_PREFIX,
    PEFT_TENSORS_FILE,
    TENSORS_FILE,
    UNSUPPORTED_PEFT_OPTIONS,
    refuse_base_changing_init,
    scaling_of,
)
from lowrank.analysis.row_changes import FactoredUpdate, FullUpdate, Update, check_shapes
from lowrank.analysis.streaming import FileTensors, Location, MemoryTensors, Tensors, locate
from lowrank.settings import EMBEDDED

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class Stored:
    """How a checkpoint stores one module: a full weight, or LoRA/DoRA factors (tensor names)."""

    weight: str | None = None
    lora_A: str | None = None
    lora_B: str | None = None
    magnitude: str | None = None
    frozen_base: str | None = None  # lowrank layers inside a full checkpoint keep W0 as `<module>.base.weight`


@dataclass
class Checkpoint:
    """One checkpoint folder: its tensors, what each module stores, and how to scale its factors."""

    source: str
    step: int
    kind: str  # "full", "peft" or "lowrank"
    tensors: FileTensors
    modules: dict[str, Stored]
    config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None
    alpha: float | None = None

    @property
    def base_name(self) -> str | None:
        """The base model the adapter was trained on, as its configuration records it."""
        name = self.config.get("base_model_name_or_path") if self.kind == "peft" else self.config.get("backbone")
        return None if not name or name == "unknown" else str(name)

    @property
    def transposed(self) -> bool:
        """PEFT's ``fan_in_fan_out``: the adapted weights are stored ``[in, out]`` (GPT-2's ``Conv1D``)."""
        return bool(self.config.get("fan_in_fan_out")) if self.kind == "peft" else False

    def scaling(self, module: str, rank: int) -> float:
        """The factor ``s`` of ``s·B·A`` for ``module`` (checkpoint naming) of rank ``rank``."""
        if self.kind == "lowrank":
            expected, alpha = int(self.config["rank"]), float(self.config["alpha"])
        elif self.kind == "peft":
            expected = int(_pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"]))
            alpha = float(_pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"]))
        else:
            if self.alpha is None:
                raise ValueError(f"checkpoint {self.source!r} holds lowrank adapter factors ({module}.lora_A) but a "
                                 "full checkpoint does not record their alpha: pass --alpha (the alpha of "
                                 "add_adapters), or save the adapters with lowrank.save_adapters")
            expected, alpha = rank, float(self.alpha)
        if expected != rank:
            raise ValueError(f"checkpoint {self.source!r}: {module} has rank {rank} in the file but {expected} "
                             "in its configuration")
        if self.kind == "peft" and self.config.get("use_rslora"):
            return alpha / rank**0.5
        if self.kind == "lowrank":  # the file's scaling rule (rsLoRA too), as load_adapters restores it
            return scaling_of(self.config)
        return alpha / rank

    def check(self, module: str, base_shape: tuple[int, ...], transposed: bool = False) -> None:
        """Check, from the headers alone, that ``module`` (checkpoint naming) fits a base weight of ``base_shape``."""
        stored = self.modules[module]
        shapes = {k: self.tensors.shape(v) for k, v in vars(stored).items() if v and k != "frozen_base"}
        where = f"checkpoint {self.source!r}, {module}"
        if stored.lora_A and len(shapes["lora_A"]) != 2:
            raise ValueError(f"{where}: adapter factor A has shape {shapes['lora_A']}, not a matrix (a LoRA on a "
                             "convolution?); only linear layers can be analysed")
        try:
            check_shapes(base_shape, transposed, **shapes)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if stored.lora_A:
            self.scaling(module, shapes["lora_A"][0])

    def update(self, module: str, base: Tensors, base_weight: str) -> Update:
        """The update of ``module`` (checkpoint naming) against the base tensor ``base_weight``; reads the factors."""
        stored = self.modules[module]
        if stored.lora_A is None:
            assert stored.weight is not None
            return FullUpdate(_Rows(self.tensors, stored.weight))
        assert stored.lora_B is not None
        a, b = self.tensors.rows(stored.lora_A), self.tensors.rows(stored.lora_B)
        magnitude = self.tensors.rows(stored.magnitude).reshape(-1) if stored.magnitude else None
        if stored.frozen_base is not None:
            _check_frozen_base(self, stored.frozen_base, base, base_weight)
        return FactoredUpdate(a, b, self.scaling(module, a.shape[0]), magnitude)


@dataclass
class _Rows:
    """Rows of one tensor of a store (satisfies :class:`lowrank.analysis.row_changes.RowBlocks`).

    From files, blocks are read into two alternating buffers (a block stays valid until two more are read,
    enough for :func:`~lowrank.analysis.row_changes.magnitude_direction_changes`, which reads one ahead): no
    allocation per block, so memory does not creep up over thousands of blocks.
    """

    store: Tensors
    name: str
    _buffers: list[torch.Tensor] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.store.shape(self.name)  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if not isinstance(self.store, FileTensors):
            return self.store.rows(self.name, start, stop)
        size = (stop - start) * self.store.info(self.name).row_bytes
        if not self._buffers or self._buffers[0].numel() < size:
            self._buffers = [torch.empty(size, dtype=torch.uint8) for _ in range(2)]
        self._buffers.reverse()
        return self.store.rows(self.name, start, stop, out=self._buffers[0])


def base_rows(store: Tensors, name: str) -> _Rows:
    """The base tensor ``name`` as row blocks."""
    return _Rows(store, name)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first key matching the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_frozen_base(checkpoint: Checkpoint, frozen: str, base: Tensors, base_weight: str) -> None:
    """A full checkpoint with lowrank layers carries W0 (``.base.weight``): it must be the given base's."""
    rows = min(8, base.shape(base_weight)[0])
    if checkpoint.tensors.shape(frozen) != base.shape(base_weight):
        raise ValueError(f"checkpoint {checkpoint.source!r}: {frozen} has shape {checkpoint.tensors.shape(frozen)}, "
                         f"the base's {base_weight} {base.shape(base_weight)}")
    mine = checkpoint.tensors.rows(frozen, 0, rows).double()
    theirs = base.rows(base_weight, 0, rows).double()
    if not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-6):
        raise ValueError(f"checkpoint {checkpoint.source!r} was not trained from this base: its frozen {frozen} "
                         f"differs from the base's {base_weight}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a JSON object")
    return content


def _factored_modules(names: Iterable[str], a: str, b: str, magnitudes: Sequence[str]) -> dict[str, Stored]:
    """Modules stored as factors ``<m><a>``/``<m><b>`` (and a magnitude), plus full 2-D ``<m>.weight``."""
    names = list(names)
    present = set(names)
    modules: dict[str, Stored] = {}
    for name in names:
        if name.endswith(a):
            module = name[: -len(a)]
            if module + b not in present:
                raise ValueError(f"{module} has a LoRA factor A ({name}) but no B ({module + b})")
            magnitude = next((module + m for m in magnitudes if module + m in present), None)
            frozen = module + ".base.weight" if module + ".base.weight" in present else None
            modules[module] = Stored(lora_A=name, lora_B=module + b, magnitude=magnitude, frozen_base=frozen)
    used = {n for s in modules.values() for n in vars(s).values() if n}
    for name in names:
        if name.endswith(".weight") and name not in used and name[: -len(".weight")] not in modules:
            modules[name[: -len(".weight")]] = Stored(weight=name)
    return modules


def open_checkpoint(name: str | Path, step: int, alpha: float | None = None) -> Checkpoint:
    """Open a checkpoint folder (local or hub) and work out what it stores; nothing large is read."""
    location = locate(name)
    config_path = location.file(CONFIG_FILE)
    if config_path is not None:
        config = _read_json(config_path)
        if config.get("format") == FORMAT:
            return _open_lowrank(location, step, config)
        if "peft_type" in config:
            return _open_peft(location, step, config)
    tensors = FileTensors.model(location)
    if tensors is None:
        if location.file("pytorch_model.bin") or location.file("adapter_model.bin"):
            raise ValueError(f"{location.name!r} holds only pickled PyTorch weights (.bin); this analysis reads "
                             "safetensors: re-save it with save_pretrained(..., safe_serialization=True)")
        raise ValueError(f"{location.name!r} is neither a model checkpoint (model.safetensors or its index) nor an "
                         f"adapter folder ({CONFIG_FILE} of PEFT or lowrank)")
    model_config_path = location.file("config.json")
    model_config = _read_json(model_config_path) if model_config_path else None
    try:
        modules = _factored_modules(tensors.names(), ".lora_A", ".lora_B", (".magnitude",))
    except ValueError as error:
        raise ValueError(f"checkpoint {location.name!r}: {error}") from error
    return Checkpoint(location.name, step, "full", tensors, modules, {}, model_config, alpha)


def _open_peft(location: Location, step: int, config: dict[str, Any]) -> Checkpoint:
    where = f"PEFT adapter {location.name!r}"
    if config["peft_type"] != "LORA":
        raise ValueError(f"{where} is of type {config['peft_type']}; only LoRA and DoRA adapters can be analysed")
    for option in UNSUPPORTED_PEFT_OPTIONS:
        if config.get(option):
            raise ValueError(f"{where} uses {option}={config[option]!r}, whose merged weight is not LoRA's or DoRA's; "
                             "it cannot be analysed from its factors")
    refuse_base_changing_init(config, where)
    for required in ("r", "lora_alpha"):
        if required not in config:
            raise ValueError(f"{where}: {CONFIG_FILE} has no {required!r}")
    tensors = FileTensors.single(location, PEFT_TENSORS_FILE)
    if tensors is None:
        raise ValueError(f"{where} has no {PEFT_TENSORS_FILE} (only safetensors adapters can be read; re-save with "
                         "save_pretrained(..., safe_serialization=True))")
    renamed = {}
    for key in tensors.names():
        short = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if ".lora_embedding_" in short:
            continue  # LoRA on embeddings: not a linear layer
        renamed[short] = key
    modules = {m: Stored(**{k: (renamed[v] if v else None) for k, v in vars(s).items()})
               for m, s in _factored_modules(renamed, ".lora_A.weight", ".lora_B.weight",
                                             (".lora_magnitude_vector", ".lora_magnitude_vector.weight")).items()}
    return Checkpoint(location.name, step, "peft", tensors, modules, config)


def _open_lowrank(location: Location, step: int, config: dict[str, Any]) -> Checkpoint:
    tensors = FileTensors.single(location, TENSORS_FILE)
    if tensors is None:
        raise ValueError(f"adapter folder {location.name!r} has a lowrank {CONFIG_FILE} but no {TENSORS_FILE}")
    metadata = tensors.metadata()
    if "lowrank" in metadata:  # the file's own copy is authoritative (the JSON beside it is for reading)
        config = json.loads(metadata["lowrank"])
    for required in ("method", "rank", "alpha"):
        if required not in config:
            raise ValueError(f"adapter folder {location.name!r}: configuration field {required!r} is missing")
    modules = _factored_modules(tensors.names(), ".lora_A", ".lora_B", (".magnitude",))
    return Checkpoint(location.name, step, "lowrank", tensors, modules, config)


@dataclass
class Base:
    """The pretrained model: its tensors and, for a checkpoint folder, its ``config.json``."""

    name: str
    tensors: Tensors
    model_config: dict[str, Any] | None = None

    def aliases(self) -> dict[str, str]:
        """Module name in the files → module name in transformers' model, where the two differ.

        transformers 5 renames some layouts when it loads them (ViT's ``encoder.layer.0.attention.attention.query``
        is ``layers.0.attention.q_proj`` in the model) and writes the old names back when it saves; PEFT adapters
        use the model's names. Only pure renamings count: a weight that transformers splits or fuses on loading
        has no single counterpart.
        """
        if not self.model_config:
            return {}
        try:
            from transformers.conversion_mapping import get_checkpoint_conversion_mapping
            from transformers.core_model_loading import WeightConverter, WeightRenaming
            from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
        except ImportError:  # transformers before 5 does not rename
            return {}
        model_type = self.model_config.get("model_type")
        keys = [*(self.model_config.get("architectures") or []), MODEL_MAPPING_NAMES.get(model_type), model_type]
        transforms = [t for key in dict.fromkeys(k for k in keys if k)
                      for t in (get_checkpoint_conversion_mapping(key) or [])]
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        out = {}
        for name in self.tensors.names():
            renamed = name
            for renaming in renamings:
                renamed, _ = renaming.rename_source_key(renamed)
            fused = any(converter.rename_source_key(renamed)[1] is not None for converter in converters)
            if renamed != name and not fused and name.endswith(".weight") and renamed.endswith(".weight"):
                out[name[: -len(".weight")]] = renamed[: -len(".weight")]
        return out


def open_base(name: str | Path) -> Base:
    """``embedded`` (the course's backbone), a local folder or a hub name; only headers are read here."""
    if str(name) == EMBEDDED:
        from lowrank.backbone import embedded_state_dict

        weights = embedded_state_dict()
        # Named as in the course's DistilBertForSequenceClassification (and its checkpoints and adapters).
        return Base(EMBEDDED, MemoryTensors({f"distilbert.{k}": v for k, v in weights.items()}, EMBEDDED),
                    {"model_type": "distilbert"})
    location = locate(name)
    tensors = FileTensors.model(location)
    if tensors is None:
        if location.file(CONFIG_FILE) is not None:
            raise ValueError(f"base {location.name!r} is an adapter folder, not a model; pass the model it adapts "
                             f"as --base (or leave --base out to use the one its {CONFIG_FILE} names)")
        raise ValueError(f"base {location.name!r} has no model.safetensors (nor an index of shards)")
    config_path = location.file("config.json")
    return Base(location.name, tensors, _read_json(config_path) if config_path else None)


def select_modules(base: Base, pattern: str) -> dict[str, str]:
    """Module name → weight tensor name, for every 2-D ``*.weight`` of the base whose module matches ``pattern``.

    A module matches by its name in the files or in transformers' model (:meth:`Base.aliases`).
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"--modules {pattern!r} is not a regular expression: {error}") from error
    weights = [n for n in base.tensors.names() if n.endswith(".weight")]
    aliases = base.aliases()
    matched = {m: n for n in weights
               if regex.search(m := n[: -len(".weight")]) or regex.search(aliases.get(m, m))}
    chosen = {m: n for m, n in matched.items() if len(base.tensors.shape(n)) == 2}
    if not chosen:
        suffixes = sorted({n[: -len(".weight")].rsplit(".", 1)[-1] for n in weights})
        what = f"matches only weights that are not 2-D ({', '.join(sorted(matched)[:3])})" if matched else \
            "matches no weight"
        raise ValueError(f"--modules {pattern!r} {what} of the base {base.name!r}; its weights' modules end with: "
                         + ", ".join(suffixes))
    return chosen


def align(base_modules: Sequence[str], available: Iterable[str]) -> dict[str, str]:
    """Base module name → checkpoint module name, under the one prefix change that matches the most names.

    A checkpoint may add a prefix (``base_model.model.``, ``distilbert.``) or lack one (``model.``) relative to
    its base; names absent under that change are left out.
    """
    available = set(available)
    candidates: set[tuple[str, str]] = {("", "")}  # (strip from base, add for checkpoint)
    for name in base_modules:
        parts = name.split(".")
        candidates |= {(".".join(parts[:i]) + ".", "") for i in range(1, len(parts))
                       if ".".join(parts[i:]) in available}
        candidates |= {("", other[: -len(name)]) for other in available if other.endswith("." + name)}

    def mapping(change: tuple[str, str]) -> dict[str, str]:
        strip, add = change
        out = {}
        for name in base_modules:
            if name.startswith(strip) and add + name[len(strip):] in available:
                out[name] = add + name[len(strip):]
        return out

    best = max(sorted(candidates, key=lambda c: (len(c[0]) + len(c[1]), c)), key=lambda c: len(mapping(c)))
    return mapping(best)


def find_run(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each ``checkpoint-N`` of a 🤗 Trainer ``output_dir``, by step.

    The ``output_dir`` itself counts as a checkpoint too when it holds weights and a ``trainer_state.json``
    whose ``global_step`` no ``checkpoint-N`` has (the final model saved by ``trainer.save_model``
    plus ``trainer.save_state``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"run folder {str(folder)!r} does not exist")
    found = sorted((int(m.group(1)), p) for p in root.iterdir()
                   if p.is_dir() and (m := _CHECKPOINT_DIR.match(p.name)))
    state = root / "trainer_state.json"
    has_weights = any((root / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                     PEFT_TENSORS_FILE, TENSORS_FILE))
    if has_weights and state.is_file():
        step = int(_read_json(state).get("global_step", -1))
        if step >= 0 and step not in {s for s, _ in found}:
            found.append((step, root))
    if not found:
        entries = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise ValueError(f"run folder {str(folder)!r} has no checkpoint-N folders (it holds: {entries})")
    return sorted(found)


def same_model(a: str, b: str) -> bool:
    """Whether two base names plausibly name one model: a hub id and a local copy of it compare equal.

    Compares the last path part, case-insensitively; a hub cache path ``models--org--name/snapshots/…``
    counts as ``name``.
    """
    def canonical(name: str) -> str:
        cached = re.search(r"models--[^/\\]+--([^/\\]+)", name)
        return (cached.group(1) if cached else Path(name.rstrip("/\\")).name or name).lower()

    return canonical(str(a)) == canonical(str(b))
