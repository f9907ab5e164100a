"""The packages form layers and every import points down: the shape of the tree stays.

    utils < datasets < backbones < methods < engine < evaluation < experiments < scripts

A module may import its own package and those below it, never one above (function-level
imports included). The stage scripts, reproduce.py and benchmarks/ sit on top.
"""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

LAYERS = ["utils", "datasets", "backbones", "methods", "engine", "evaluation", "experiments"]
SCRIPTS = ["train_unsupervised", "train_linear_evaluation", "test", "reproduce", "benchmarks"]


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    if top in LAYERS:
        return LAYERS.index(top)
    if top in SCRIPTS:
        return len(LAYERS)
    return None  # the standard library or a third-party package


def project_modules() -> list[tuple[str, object]]:
    files = [path for layer in LAYERS + ["benchmarks"] for path in sorted((REPO / layer).rglob("*.py"))]
    files += [REPO / f"{name}.py" for name in SCRIPTS if (REPO / f"{name}.py").exists()]
    return [(str(path.relative_to(REPO).with_suffix("")).replace("/", "."), path) for path in files]


def imported_modules(path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".")[: -node.level]
                found.append((node.lineno, ".".join(package + ([node.module] if node.module else []))))
            else:
                found.append((node.lineno, node.module))
    return found


def test_every_layer_has_modules():
    modules = {name.split(".")[0] for name, _ in project_modules()}
    assert set(LAYERS) <= modules


@pytest.mark.parametrize("module,path", project_modules(), ids=lambda value: str(value))
def test_imports_point_down(module, path):
    own = layer_of(module)
    upward = [
        f"{path.name}:{line} imports {name}"
        for line, name in imported_modules(path, module)
        if (layer := layer_of(name)) is not None and layer > own
    ]
    assert not upward, f"{module} is in layer {own} ({(LAYERS + ['scripts'])[own]}): " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds imports inside functions too, so a lazy upward import cannot hide."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef late():\n    from engine.loop import Engine\n    return Engine\n")
    names = [name for _, name in imported_modules(sample, "methods.sample")]
    assert names == ["os", "engine.loop"] and layer_of("engine.loop") > layer_of("methods.sample")
