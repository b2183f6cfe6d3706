"""On a CPU without bf16 hardware, nothing by default does bf16 work beyond a few seconds (issue 26, item 1).

torch emulates bf16 where the CPU has no AMX or AVX512-BF16: about 1 GFLOP/s against tens in fp32. With
``LOWRANK_ASSUME_NO_BF16=1`` (``lowrank.settings.bf16_is_fast`` is False, as on such a laptop) these tests count the
floating-point operations of every matrix product, attention or convolution that gets a bf16 (or fp16) input
(``Bf16Flops``, a ``TorchDispatchMode``: it sees the operators after autocast has cast their inputs) over

* ``lowrank.train`` in the course's default precision (``auto``, as a notebook passes it): none at all;
* every code cell of the practitioner notebook A1 (speed and mixed precision) in the quick profile: under
  ``BOUND`` (its mixed-precision lesson runs bf16 on a few tiny tensors, by design);
* the benches' default paths: none of them runs a bf16 contender (``bench/precision_bench.py``'s ``bf16_allowed``).

Each count is checked against a control that must see bf16 work (the gate forced open), so a counter that saw
nothing could not pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

from tests.helpers import make_tiny_distilbert, tiny_split

ROOT = Path(__file__).resolve().parent.parent
A1 = ROOT / "notebook_sources" / "in_practice" / "A1_speed_and_precision.py"
BENCH = ROOT / "bench"
EMULATED_GFLOPS = 1.0  # emulated bf16 torch.mm on a CPU without bf16 hardware (issue 26 measured 1.2 at 512³)
BOUND = 3 * EMULATED_GFLOPS * 1e9  # a few seconds of emulated bf16
LOW_PRECISION = (torch.bfloat16, torch.float16)


class Bf16Flops(TorchDispatchMode):
    """Counts the FLOPs (torch's own formulas, ``torch.utils.flop_counter``) of operators with a bf16/fp16 input.

    ``dry=True`` counts them without computing them (their output is zeros of the right shape, from the operator's
    meta kernel): a control that must see slow bf16 work then takes no longer where bf16 is emulated."""

    def __init__(self, dry: bool = False) -> None:
        super().__init__()
        self.dry = dry
        self.flops = 0
        self.by_operator: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(func.overloadpacket)
        low = formula is not None and any(isinstance(value, torch.Tensor) and value.dtype in LOW_PRECISION
                                          for value in tree_flatten((args, kwargs))[0])
        if low and self.dry:
            on_meta = tree_map(lambda v: v.to("meta") if isinstance(v, torch.Tensor) else v, (args, kwargs))
            out = tree_map(lambda v: torch.zeros(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v,
                           func(*on_meta[0], **on_meta[1]))
        else:
            out = func(*args, **kwargs)
        if low:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.flops += flops
            name = str(func.overloadpacket)
            self.by_operator[name] = self.by_operator.get(name, 0) + flops
        return out

    def __str__(self) -> str:
        return f"{self.flops / 1e9:.2f} GFLOP in bf16 ({self.by_operator})"


@pytest.fixture
def no_bf16_hardware(monkeypatch):
    """As on a CPU without bf16 hardware, in the default precision."""
    monkeypatch.setenv("LOWRANK_ASSUME_NO_BF16", "1")
    monkeypatch.delenv("LOWRANK_PRECISION", raising=False)


def test_the_counter_sees_bf16_under_autocast():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    with Bf16Flops() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
        torch.nn.functional.linear(a, b.T)
    with Bf16Flops() as fp32:
        a @ b
    assert counter.flops == 2 * 64 * 32 * 16 and fp32.flops == 0


def tiny_training_run() -> Bf16Flops:
    """Two steps of ``lowrank.train`` in the course's precision, as a notebook passes it (``setup.autocast_dtype``)."""
    from lowrank.notebook import setup_notebook
    from lowrank.training import train

    model, setup = make_tiny_distilbert(), setup_notebook(use_device=False)
    with Bf16Flops() as counter:
        train(model, tiny_split(16), batch_size=8, max_steps=2, lr=1e-3, progress=False, pad_token_id=0,
              autocast_dtype=setup.autocast_dtype)
    return counter


def test_train_in_auto_precision_runs_no_bf16(no_bf16_hardware, monkeypatch):
    counter = tiny_training_run()
    assert counter.flops == 0, f"lowrank.train in auto precision without bf16 hardware ran {counter}"
    import lowrank.settings

    monkeypatch.setattr(lowrank.settings, "bf16_is_fast", lambda device=None: True)  # control: the gate open
    assert tiny_training_run().flops > 0


def notebook_code(path: Path) -> list[str]:
    import jupytext

    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "code"]


def test_a1_quick_runs_no_slow_bf16(no_bf16_hardware, monkeypatch, tmp_path):
    monkeypatch.setenv("LOWRANK_PROFILE", "quick")
    monkeypatch.setenv("LOWRANK_FIGURES", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lowrank.timing

    # each timing once, not its rounds: what runs in which precision is the same, in a fraction of the time
    medians, rate = lowrank.timing.interleaved_medians, lowrank.timing.matmul_gflops
    monkeypatch.setattr(lowrank.timing, "interleaved_medians", lambda functions, rounds, warmup=1:
                        medians(functions, rounds=1, warmup=0))
    monkeypatch.setattr(lowrank.timing, "matmul_gflops", lambda dtype=torch.float32, size=2048, repeats=8:
                        rate(dtype, size, repeats=1))
    cells = notebook_code(A1)
    namespace = {"__name__": "__main__"}
    with Bf16Flops() as counter:
        for source in cells:
            exec(compile(source, str(A1), "exec"), namespace)
    print(f"A1, quick profile, no bf16 hardware: {counter}")
    assert 0 < counter.flops < BOUND, (f"A1 in the quick profile without bf16 hardware ran {counter}: about "
                                       f"{counter.flops / 1e9 / EMULATED_GFLOPS:.0f} s of emulated bf16")
    # control: the cell that measures bf16 where it is fast, run again with its gate open, is far over the bound
    # (counted dry: without computing the bf16 products)
    gated = next(source for source in cells if "if bf16_is_fast(device):" in source)
    namespace["bf16_is_fast"], namespace["ROUNDS"] = (lambda device=None: True), 0  # the fewest rounds it takes
    with Bf16Flops(dry=True) as control:
        exec(compile(gated, str(A1), "exec"), namespace)
    assert control.flops > BOUND, control


def load_bench(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def test_benches_default_paths_run_no_bf16(no_bf16_hardware, monkeypatch, capsys):
    precision_bench = load_bench("precision_bench")
    assert not precision_bench.bf16_allowed(force=False)
    assert "bf16 skipped" in capsys.readouterr().out
    assert precision_bench.bf16_allowed(force=True)
    for name, argv in (("precision_bench", []), ("micro_batch_bench", ["--precision", "bf16"])):
        monkeypatch.setattr(sys, "argv", [name, *argv])
        with Bf16Flops() as counter, pytest.raises(SystemExit):
            load_bench(name).main()  # refused before loading anything
        assert counter.flops == 0
    # every bench that can run bf16 work asks bf16_allowed first; the others (step, persistence, analyze) only
    # convert or store bf16 tensors, never multiply them
    for path in sorted(BENCH.glob("*.py")):
        text = path.read_text()
        if "autocast" in text or "matmul_gflops(torch.bfloat16" in text:
            assert "bf16_allowed(" in text, f"{path.name} runs bf16 without asking bf16_allowed"


def test_compile_bench_default_is_fp32_only(no_bf16_hardware, monkeypatch):
    compile_bench = load_bench("compile_bench")
    timed: list[str] = []
    monkeypatch.setattr(compile_bench, "interleaved_medians",
                        lambda steps, rounds: timed.extend(steps) or dict.fromkeys(steps, 1.0))
    monkeypatch.setattr(compile_bench, "matmul_gflops", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr(torch, "compile", lambda model: model)  # the contenders, not the compiler, are checked
    monkeypatch.setattr(compile_bench, "step_function", lambda model, batches, dtype, size: lambda: None)
    monkeypatch.setattr(sys, "argv", ["compile_bench"])
    compile_bench.main()
    assert timed == ["eager fp32", "compiled fp32"]
    monkeypatch.setattr(sys, "argv", ["compile_bench", "--force-bf16"])
    timed.clear()
    compile_bench.main()
    assert "eager bf16" in timed

