"""The package's layering (docs/ARCHITECTURE.md): every module imports only modules of a lower
layer (or, inside the one-stage packages ``constraints`` and ``allocators``, its siblings), and
none imports the package's own ``__init__``. Read from the source with ``ast``, lazy imports too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "ompq_ext"
COMPILED = {"_core"}  # extension modules, built next to the sources

# Lowest first. A module may import from the layers before its own.
LAYERS = [
    {"errors", "_version", "_core", "models"},
    {"cuda_kernels", "progress", "guard", "inputs", "layers", "weight_ops", "plan_file", "constraints"},
    {"orthogonality", "features", "budget", "solver", "quant.ops", "quant.op_inputs", "quant.padding", "bit_configs"},
    {"record", "quant.scales", "distributed"},
    {"allocators", "quant.modules", "plots"},
    {"problem", "quant", "quant.configs", "quant.reconstruct", "quant.gptq", "quant.qat"},
    {"plan", "quant.api"},
    {"demo", "sweep", "export"},
    {"cli"},
    {""},  # the package's __init__
]
STAGE_PACKAGES = {"constraints", "allocators", "export"}  # one stage each: their modules import each other


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    for rank, members in enumerate(LAYERS):
        if name in members or name.split(".")[0] in members & STAGE_PACKAGES:
            return rank
    raise AssertionError(f"module {name!r} has no layer in tests/test_architecture.py; place it deliberately")


def is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return name.split(".")[-1] in COMPILED or path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported module under ompq_ext, line) for every import of the package's own code in ``path``."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name[len("ompq_ext."):] if a.name != "ompq_ext" else "", node.lineno)
                    for a in node.names if a.name.split(".")[0] == "ompq_ext"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "ompq_ext":
                target = node.module[len("ompq_ext."):] if node.module != "ompq_ext" else ""
            else:
                continue
            for alias in node.names:  # "from . import x" imports the submodule x where there is one
                sub = f"{target}.{alias.name}" if target else alias.name
                out.append((sub if is_module(sub) else target, node.lineno))
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    name = module_name(path)
    rank = layer_of(name)
    for target, line in imports(path):
        where = f"{path.relative_to(PACKAGE)}:{line} imports {target or 'ompq_ext (the package __init__)'}"
        if name == "":
            continue  # the package's __init__ gathers the public API
        assert target != "", where + ": import the module that defines the name instead"
        same_stage = target.split(".")[0] == name.split(".")[0] and target.split(".")[0] in STAGE_PACKAGES
        assert same_stage or layer_of(target) < rank, where + f" (layer {layer_of(target)} >= its own {rank})"


def test_the_checker_sees_upward_and_package_imports(tmp_path, monkeypatch):
    """The rules fail where they should: an upward import and an import of the package itself."""
    fake = tmp_path / "ompq_ext"
    (fake / "quant").mkdir(parents=True)
    for f in ("__init__.py", "errors.py", "plan.py", "quant/__init__.py"):
        (fake / f).write_text("")
    (fake / "errors.py").write_text("from .plan import plan\nfrom . import __version__\n")
    (fake / "quant" / "api.py").write_text("import ompq_ext.plan\nfrom ..errors import OmpqError\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert imports(fake / "errors.py") == [("plan", 1), ("", 2)]
    assert imports(fake / "quant" / "api.py") == [("plan", 1), ("errors", 2)]
    with pytest.raises(AssertionError, match="layer 6 >= its own 0"):
        test_no_upward_imports(fake / "errors.py")
