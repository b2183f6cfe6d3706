"""Memory and time of ``python -m lowrank.analyze`` on a checkpoint shaped like a large model's attention.

Builds, for each size, a synthetic sharded checkpoint with Llama-2-7B's attention layout
(``model.layers.N.self_attn.{q,k,v}_proj.weight``, 4096 × 4096, bf16, four layers per shard, an
index file): a base, four full fine-tuned checkpoints, and four PEFT DoRA adapters (r = 16) of
``q_proj``/``v_proj``. Then, each in a fresh process with the files evicted from the page cache:

* **read**: plain reads of exactly the bytes the analysis selects (``q_proj`` and ``v_proj`` of the
  base and of every checkpoint; ``k_proj`` is skipped), into one reused buffer: the disk's floor;
* **full**: ``analyze_runs`` over the four full checkpoints;
* **dora**: ``analyze_runs`` over the four adapters (only the base's matrices are large);

and reports wall time and the process's peak resident memory minus its level after imports (and a
warm-up on a 4 × 4 matrix); on Linux the peak is reset there (``/proc/self/clear_refs``), so
``VmHWM`` measures the analysis alone, elsewhere ``getrusage``'s peak is used. Results go to ``bench/analyze_results.json``; the files are deleted at the end.

    python bench/analyze_bench.py                    # 8 and 32 layers (about 15 GB on disk at 32)
    python bench/analyze_bench.py --layers 2 --dim 512 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS_PER_SHARD = 4
CHECKPOINTS = 4
RANK = 16
SELECTED = r"(q_proj|v_proj)$"


def build(folder: Path, layers: int, dim: int) -> dict[str, list[Path]]:
    """Base, ``CHECKPOINTS`` full checkpoints and as many DoRA adapters; returns their folders."""
    import torch
    from safetensors.torch import save_file

    folders = [folder / "base"] + [folder / f"full-{t}" for t in range(1, CHECKPOINTS + 1)]
    for f in folders:
        f.mkdir(parents=True)
        (f / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    weight_map = {}
    for first in range(0, layers, LAYERS_PER_SHARD):
        shard = f"model-{first // LAYERS_PER_SHARD + 1:05d}.safetensors"
        names = [f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(first, min(first + LAYERS_PER_SHARD, layers))
                 for p in ("q", "k", "v")]
        weight_map.update(dict.fromkeys(names, shard))
        # A hand-written header, then one pass over the matrices, each written into the base and the four
        # checkpoints before the next is made: memory stays at a few matrices whatever the size.
        handles = []
        size = 2 * dim * dim
        header = {n: {"dtype": "BF16", "shape": [dim, dim], "data_offsets": [i * size, (i + 1) * size]}
                  for i, n in enumerate(names)}
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        for f in folders:
            handle = (f / shard).open("wb")
            handle.write(struct.pack("<Q", len(text)) + text)
            handles.append(handle)
        for name in names:
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            base = torch.randn(dim, dim, generator=generator) * 0.02
            noise = torch.randn(dim, dim, generator=generator) * 0.02
            rows = 1 + 0.01 * torch.randn(dim, 1, generator=generator)
            for t, handle in enumerate(handles):
                weight = base if t == 0 else base * rows**t + (0.01 * t) * noise
                handle.write(weight.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
    for f in folders:
        (f / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    adapters = []
    generator = torch.Generator().manual_seed(1)
    for t in range(1, CHECKPOINTS + 1):
        adapter = folder / f"dora-{t}"
        adapter.mkdir()
        tensors = {}
        for i in range(layers):
            for p in ("q", "v"):
                key = f"base_model.model.model.layers.{i}.self_attn.{p}_proj"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, dim, generator=generator) / dim**0.5
                tensors[f"{key}.lora_B.weight"] = 0.002 * t * torch.randn(dim, RANK, generator=generator)
                tensors[f"{key}.lora_magnitude_vector"] = 0.02 * dim**0.5 * (1 + 0.01 * t * torch.randn(dim, generator=generator))
        save_file(tensors, adapter / "adapter_model.safetensors")
        (adapter / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "use_dora": True,
            "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": str(folder / "base")}))
        adapters.append(adapter)
    return {"full": folders, "dora": adapters}


def evict(folder: Path) -> None:
    """Drop this benchmark's files (only them) from the page cache, so reads come from the disk."""
    for path in folder.rglob("*.safetensors"):
        with path.open("rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) / 1024 for line in handle if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def start_peak() -> float:
    """Reset the peak resident memory to the current level (Linux); return that level in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_mb("VmRSS") or 0.0
    except OSError:  # elsewhere: the peak so far, from getrusage
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    """Peak resident memory since :func:`start_peak` (MiB)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, folder: Path) -> dict:
    """Run in a fresh process: import, note the memory, do ``mode``, report time and peak memory growth."""
    from lowrank.analysis.command import Run, analyze_runs
    from lowrank.analysis.checkpoints import open_base, select_modules
    from lowrank.analysis.streaming import bytes_of

    import torch
    import tqdm.auto  # noqa: F401  (imported lazily by the analysis: part of the baseline, not of the data)

    from lowrank.analysis.row_changes import FactoredUpdate, TensorRows, magnitude_direction_changes

    base = open_base(str(folder / "base"))
    names = list(select_modules(base, SELECTED).values())
    full = [(t, str(folder / f"full-{t}")) for t in range(1, CHECKPOINTS + 1)]
    # Warm up torch's kernels on a tiny matrix, so the baseline holds the process's fixed costs.
    magnitude_direction_changes(TensorRows(torch.ones(4, 4)), [FactoredUpdate(torch.ones(1, 4), torch.ones(4, 1), 1.0)])
    after_imports = start_peak()
    start = time.perf_counter()
    if mode == "read":
        selected = 0
        buffer = None
        for store in [base.tensors] + [open_base(path).tensors for _, path in full]:
            for name in names:
                info = store.info(name)
                buffer = bytearray(info.end - info.begin) if buffer is None else buffer
                with info.path.open("rb", buffering=0) as handle:
                    handle.seek(info.begin)
                    handle.readinto(buffer)
                selected += info.end - info.begin
        points = 0
    else:
        checkpoints = full if mode == "full" else [(t, str(folder / f"dora-{t}")) for t in range(1, CHECKPOINTS + 1)]
        result = analyze_runs([Run(mode, tuple(checkpoints))], str(folder / "base"), SELECTED, progress=False)
        points = len(result)
        selected = bytes_of(base.tensors, names) * (1 + (CHECKPOINTS if mode == "full" else 0))
    seconds = time.perf_counter() - start
    growth = peak_mb() - after_imports
    if mode == "full":  # one point against safetensors' own loader and the course's function (not timed)
        from safetensors import safe_open

        from lowrank.magnitude_direction import magnitude_direction_change

        point = result[0]
        tensors = []
        for where in ("base", f"full-{point.step}"):
            info = open_base(str(folder / where)).tensors.info(point.module + ".weight")
            with safe_open(str(info.path), framework="pt") as handle:
                tensors.append(handle.get_tensor(point.module + ".weight"))
        expected = magnitude_direction_change(tensors[1], tensors[0])
        assert abs(expected[0] - point.delta_m) <= 1e-9 * expected[0] and abs(expected[1] - point.delta_d) <= 1e-7 * expected[1], (expected, point)
    return {"mode": mode, "seconds": seconds, "selected_gb": selected / 1e9, "points": points,
            "rss_after_imports_mb": after_imports, "peak_growth_mb": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    results = []
    matrix_mb = 2 * args.dim * args.dim / 2**20
    for layers in args.layers:
        folder = Path(tempfile.mkdtemp(prefix=f"lowrank-bench-{layers}-", dir=args.dir))
        try:
            start = time.perf_counter()
            build(folder, layers, args.dim)
            print(f"{layers} layers: built {sum(p.stat().st_size for p in folder.rglob('*')) / 1e9:.1f} GB "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
            for mode in ("read", "full", "dora"):
                evict(folder)
                env = {**os.environ, "HF_HUB_OFFLINE": "1"}
                done = subprocess.run([sys.executable, __file__, "--measure", mode, str(folder)], env=env,
                                      capture_output=True, text=True, check=True)
                row = {"layers": layers, "dim": args.dim, **json.loads(done.stdout.strip().splitlines()[-1])}
                results.append(row)
                print(f"  {mode:>4}: {row['seconds']:6.1f} s, {row['selected_gb']:5.2f} GB selected "
                      f"({row['selected_gb'] / row['seconds']:.2f} GB/s), peak memory +{row['peak_growth_mb']:.0f} MiB "
                      f"(one matrix: {matrix_mb:.0f} MiB)", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(folder)
    read = {r["layers"]: r["seconds"] for r in results if r["mode"] == "read"}
    summary = {"matrix_mb": matrix_mb, "cpu_count": os.cpu_count(), "results": results,
               "full_over_read": {str(k): next(r["seconds"] for r in results if r["layers"] == k and r["mode"] == "full")
                                  / v for k, v in read.items()}}
    (ROOT / "bench" / "analyze_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("time of the full-checkpoint analysis / plain read of the same bytes:",
          ", ".join(f"{k} layers {v:.2f}" for k, v in summary["full_over_read"].items()))


if __name__ == "__main__":
    main()
