"""The tree shows the architecture: imports only point down the layers.

core (config, schema, run directory, errors, names, model manifest) <- stages/ <- engine <- applications
(report, generator, training) and the CLI. Checked on the source, so a new upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {  # a package and the project packages it may import
    "pipeline.core": {"pipeline.core"},
    "stages": {"pipeline.core", "stages"},
    "pipeline.engine": {"pipeline.core", "stages", "pipeline.engine"},
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path: Path) -> set[str]:
    """Absolute project modules a file imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    # the bare `pipeline` package (empty __init__) is imported only to ship the code to Ray's workers
    return {name for name in found if name.split(".")[0] in ("pipeline", "stages") and name != "pipeline"}


def layer_of(module: str) -> str | None:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), None)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    folder = REPO.joinpath(*layer.split("."))
    wrong = []
    for path in sorted(folder.rglob("*.py")):
        for imported in project_imports(path):
            if layer_of(imported) not in LAYERS[layer]:
                wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong, "\n".join(wrong)
