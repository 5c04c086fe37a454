"""The docs build as a site: `mkdocs build --strict` passes and the nav lists every page of docs/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mkdocs.utils.yaml import yaml_load

REPO = Path(__file__).resolve().parents[1]


def _nav_pages(nav: list) -> list[str]:
    """Every page file in a nav: entries are `title: page` or `title: [entries]`."""
    pages = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_site_builds_strict(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, check=False)
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "index.html").exists() and (tmp_path / "verify" / "index.html").exists()


def test_nav_lists_every_page() -> None:
    # mkdocs' own loader: it reads the `!!python/object/apply` slugify tag as mkdocs does
    config = yaml_load((REPO / "mkdocs.yml").read_text())
    listed = _nav_pages(config["nav"])
    assert sorted(listed) == sorted(page.name for page in (REPO / "docs").glob("*.md"))
    assert len(listed) == len(set(listed)), "a page listed twice"
