"""The tree shows the architecture: imports only point down the layers.

core (config, schema, run directory and its markers, errors, names, model manifest) <- stages/ <- engine (runs
stages, and nothing else) <- dataset (shards, card, governance, takedown) <- applications (report, exports,
training, generator, models, remove) <- the CLI and the reference pages generated from it. Checked on the
source, so a new upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE, STAGES, ENGINE, DATASET = "pipeline.core", "stages", "pipeline.engine", "pipeline.dataset"
APPLICATIONS = ("pipeline.report", "pipeline.export", "pipeline.generator", "pipeline.training", "pipeline.models",
                "pipeline.remove", "pipeline.remove_face", "pipeline.decide", "pipeline.release", "pipeline.review")
CLI = ("pipeline.__main__", "pipeline.refdocs")
BELOW_APPLICATIONS = {CORE, STAGES, ENGINE, DATASET}
LAYERS = {  # a package (or module) and the project packages it may import
    CORE: {CORE},
    STAGES: {CORE, STAGES},
    ENGINE: {CORE, STAGES, ENGINE},
    DATASET: {CORE, STAGES, ENGINE, DATASET},
    **{app: BELOW_APPLICATIONS | set(APPLICATIONS) for app in APPLICATIONS},
    **{cli: BELOW_APPLICATIONS | set(APPLICATIONS) | set(CLI) for cli in CLI},
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


def sources(layer: str) -> list[Path]:
    base = REPO.joinpath(*layer.split("."))
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def test_every_module_has_a_layer() -> None:
    modules = [module_name(path) for folder in ("pipeline", "stages") for path in (REPO / folder).rglob("*.py")]
    assert [m for m in modules if layer_of(m) is None and m != "pipeline"] == []


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = []
    for path in sources(layer):
        for imported in project_imports(path):
            if layer_of(imported) not in LAYERS[layer]:
                wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong, "\n".join(wrong)
