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


def test_type_checkers_see_the_same_names():
    """The ``TYPE_CHECKING`` imports of ``lowrank/__init__.py`` name each export, from its module."""
    import ast
    from pathlib import Path

    import lowrank

    tree = ast.parse(Path(lowrank.__file__).read_text())
    guarded = next(node for node in tree.body
                   if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {alias.name: node.module.removeprefix("lowrank.") for node in guarded.body for alias in node.names}
    assert seen == lowrank._EXPORTS
