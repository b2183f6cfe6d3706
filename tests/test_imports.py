"""The package imports light: the layers need torch only (each check runs in a fresh interpreter)."""

import subprocess
import sys

import pytest

HEAVY = ("transformers", "datasets", "peft", "matplotlib")


def loaded_after(statement: str) -> set[str]:
    """The top-level modules of ``HEAVY`` that a fresh Python has loaded after running ``statement``."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize("statement", [
    "from lowrank import LoRALinear",
    "from lowrank import DoRALinear, add_adapters, count_parameters, merge_adapters",
    "import lowrank",
])
def test_the_layers_need_no_transformers_nor_datasets(statement):
    assert loaded_after(statement) == set()


def test_lazy_names_resolve_to_their_modules():
    import lowrank
    from lowrank.backbone import load_backbone
    from lowrank.lora import LoRALinear

    assert lowrank.LoRALinear is LoRALinear and lowrank.load_backbone is load_backbone
    assert set(lowrank.__all__) <= set(dir(lowrank))
    for name in lowrank.__all__:
        assert getattr(lowrank, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lowrank.nothing_here  # noqa: B018


def modules_after(statement: str, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` a fresh Python has in ``sys.modules`` after running ``statement``."""
    probe = f"import sys\n{statement}\nprint(' '.join(m for m in {names!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_analysis_reads_the_format_names_without_the_layers_or_hashing():
    names = ("xxhash", "lowrank.adapter_files.save_load", "lowrank.adapters", "lowrank.analysis.command")
    assert modules_after("import lowrank.analysis.checkpoints", names) == set()


def test_the_callback_does_not_import_the_command():
    assert modules_after("import lowrank.analysis.callback", ("lowrank.analysis.command",)) == set()


OLD_PATHS = {  # a public entry point kept at its old path: `python -m lowrank.analyze`
    "lowrank.analyze": ("lowrank.analysis.command", "analyze_checkpoints"),
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_module_paths_still_import(old):
    import importlib

    new, name = OLD_PATHS[old]
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_python_m_lowrank_analyze_still_runs():
    done = subprocess.run([sys.executable, "-m", "lowrank.analyze", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--checkpoint" in done.stdout
