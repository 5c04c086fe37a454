"""Hostile names: every one gets its own safe slug, and nothing is written outside the run."""

from __future__ import annotations

import shutil

import pytest

from pipeline.core.names import identity_slug
from tests.conftest import run_cli, stage_rows

HOSTILE = ["../../etc", "a/b", "x" * 300, "😀 Smile", "محمد صلاح", "John Smith", "john smith", "..", "C:\\\\windows"]


@pytest.mark.slow
def test_hostile_names_stay_inside_the_run_directory(tmp_path, faces) -> None:
    photos = tmp_path / "photos"
    for name in HOSTILE:
        folder = photos / identity_slug(name)  # the local source also matches a folder by slug
        folder.mkdir(parents=True)
        shutil.copy(faces["images"] / "img38.jpg", folder)
    (tmp_path / "names.txt").write_text("\n".join(HOSTILE) + "\n\n   \n")
    out = tmp_path / "sandbox" / "run"
    result = run_cli(
        "run", "--stage", "crawl", "--config", "cpu", "--names", str(tmp_path / "names.txt"), "--out", str(out),
        "--set", "crawl.source=local", "--set", f"crawl.local_root={photos}",
    )
    assert result.returncode == 0, result.stderr
    rows = stage_rows(out, "crawl")
    assert sorted(row["name"] for row in rows) == sorted(HOSTILE)
    assert len({row["identity"] for row in rows}) == len(HOSTILE)
    assert all(row["status"] == "ok" for row in rows)
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["run"]
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
    assert len(list((out / "raw").iterdir())) == len(HOSTILE)
