"""The docs stay true: generated reference pages are current, links resolve, the README stays an entrance."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline import refdocs
from pipeline.core.config import PipelineConfig
from pipeline.core.reasons import CATALOGUE

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
REASON_CALLS = {"drop", "fail", "ImageRejected", "DownloadError"}  # what takes a reason code first


@pytest.mark.parametrize("name", sorted(refdocs.pages()))
def test_generated_pages_are_current(name: str) -> None:
    page = REPO / "docs" / name
    assert page.read_text() == refdocs.pages()[name], f"docs/{name} is stale: run `python -m pipeline.refdocs`"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_readme_is_an_entrance_and_links_every_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 15_000
    linked = {Path(target.partition("#")[0]).name for target in LINK.findall(readme)}
    assert {page.name for page in PAGES[1:]} <= linked, "a docs page the README does not link"


def _keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys += _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def test_every_config_key_and_reason_code_is_documented() -> None:
    configuration = (REPO / "docs" / "configuration.md").read_text()
    missing = [key for key in _keys(PipelineConfig().model_dump()) if f"`{key}`" not in configuration]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"
    reasons = (REPO / "docs" / "reasons.md").read_text()
    assert [code for code in CATALOGUE if f"`{code}`" not in reasons] == []


def test_stages_take_reason_codes_from_the_catalogue() -> None:
    """A reason is a catalogue constant, never a literal: a new code cannot skip docs/reasons.md."""
    literal = []
    for path in [*(REPO / "stages").rglob("*.py"), *(REPO / "pipeline").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in REASON_CALLS
                    and node.args and isinstance(node.args[0], ast.Constant)):
                literal.append(f"{path.relative_to(REPO)}:{node.lineno} {node.args[0].value!r}")
    assert literal == []
