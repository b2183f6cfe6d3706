"""What the tensor digests cost when saving and loading an adapter of realistic size.

The adapter: LoRA r = 16 on q, k, v and o of a 7B-shaped model (32 layers, hidden 4096), fp32:
32 × 4 × (16×4096 + 4096×16) values = 67.1 MB. Contenders are interleaved (lowrank.timing) and
the script prints medians and the ratios that matter: digest time / plain write time on save, and
digest time / plain read time on load, for the XXH3-128 digests lowrank records and, for
comparison, for SHA-256. Loads read a file the page cache holds (just written): the fastest read,
so the least favourable ratio for the digest. Results also go to bench/persistence_results.json.

    .venv/bin/python bench/persistence_bench.py --rounds 15     # about 45 s on 2 busy cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lowrank.adapter_files.format import PEFT_TENSORS_FILE, read_safetensors, tensor_digests, write_adapter_files
from lowrank.timing import interleaved_medians

ROOT = Path(__file__).resolve().parent.parent
LAYERS, HIDDEN, RANK, MODULES = 32, 4096, 16, ("q_proj", "k_proj", "v_proj", "o_proj")


def adapter_tensors() -> dict[str, torch.Tensor]:
    """PEFT-named LoRA factors of the 7B-shaped adapter described above."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(LAYERS):
        for module in MODULES:
            name = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=generator)
            tensors[f"{name}.lora_B.weight"] = torch.randn(HIDDEN, RANK, generator=generator)
    return tensors


def measure(folder: Path, tensors: dict[str, torch.Tensor], rounds: int) -> dict[str, float]:
    """Interleaved median seconds of each contender, writing into ``folder``."""
    config = {"r": RANK, "lora_alpha": 32, "target_modules": list(MODULES), "peft_type": "LORA"}
    path, plain = folder / PEFT_TENSORS_FILE, folder / "plain.safetensors"

    def save() -> None:
        write_adapter_files(folder, PEFT_TENSORS_FILE, tensors, {"format": "pt"}, config)

    def plain_save() -> None:
        save_file(tensors, plain, metadata={"format": "pt"})
        with open(plain, "rb") as stream:
            os.fsync(stream.fileno())

    save()
    plain_save()
    loaded, _ = read_safetensors(path)
    return interleaved_medians({
        "save (write_adapter_files, with digests)": save,
        "plain safetensors write + fsync": plain_save,
        "load (read_safetensors, verified)": lambda: read_safetensors(path),
        "plain safetensors load": lambda: load_file(plain),
        "digests alone (XXH3-128)": lambda: tensor_digests(loaded),
        "SHA-256 of the same bytes": lambda: [hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).digest()
                                              for t in loaded.values()],
    }, rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    tensors = adapter_tensors()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory(prefix="lowrank-bench-") as folder:
        medians = measure(Path(folder), tensors, args.rounds)

    digest, sha = medians["digests alone (XXH3-128)"], medians["SHA-256 of the same bytes"]
    write, read = medians["plain safetensors write + fsync"], medians["plain safetensors load"]
    ratios = {
        "digest time / plain write time": digest / write,
        "digest share of a save": digest / medians["save (write_adapter_files, with digests)"],
        "digest time / plain load time": digest / read,
        "digest share of a load": digest / medians["load (read_safetensors, verified)"],
        "SHA-256 time / plain write time": sha / write,
        "SHA-256 time / plain load time": sha / read,
    }
    print(f"adapter: {len(tensors)} tensors, {size / 1e6:.1f} MB fp32; {args.rounds} interleaved rounds; "
          f"XXH3-128 at {size / digest / 1e9:.1f} GB/s, SHA-256 at {size / sha / 1e9:.1f} GB/s")
    for name, seconds in medians.items():
        print(f"  {name:<42} {1000 * seconds:8.1f} ms")
    for name, ratio in ratios.items():
        print(f"  {name:<42} {ratio:8.3f}")
    results = {"megabytes": size / 1e6, "rounds": args.rounds, "median_seconds": medians, "ratios": ratios}
    (ROOT / "bench" / "persistence_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
