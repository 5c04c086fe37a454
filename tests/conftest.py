"""Shared fixtures: the real labelled faces in tests/data/faces, a CLI runner, generated images, and the
finished run that the modules which only read one share (tests/shared_run.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq
import pytest
from filelock import FileLock
from PIL import Image

if TYPE_CHECKING:
    from benchmarks.fixtures.crawled_folders import Corpus
    from tests.shared_run import SharedRun, SharedTree

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "tests" / "data" / "faces"

# Tests never download: a run that lacks a model fails instead of fetching it (subprocesses inherit this).
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The real models the tests run on come from `python -m pipeline models fetch` (the README's test
    command runs it first); without them, stop at once with that fix rather than fail test by test."""
    from pipeline.core.config import load_config, resolve_profile
    from pipeline.models import needed_models

    config = load_config(resolve_profile(None))  # the default profile: every CPU model the tests use
    missing = [entry.file for entry in needed_models(config) if not entry.path(config.models.cache_dir).is_file()]
    if missing:
        raise pytest.UsageError(f"model files missing from {config.models.cache_dir}: {', '.join(missing)}; "
                                "run `python -m pipeline models fetch` first (see README)")


# The files of a minute or more, longest first (`--durations=0` under `-n 2`). xdist's loadfile hands files out in
# collection order (pyproject: --no-loadscope-reorder), so these start first and no worker is left alone with one of
# them at the end. test_resume builds the session's `tree` and `reference`, which test_worker_crash and
# test_two_hosts reuse, so those two come after other files. A stale list costs minutes, never a result.
LONGEST_FIRST = ("test_resume.py", "test_takedown.py", "test_cli.py", "test_hygiene.py", "test_worker_crash.py",
                 "test_report.py", "test_two_hosts.py", "test_segment_yolo_sam.py", "test_export.py",
                 "test_crawl_sources.py", "test_curation_cli.py", "test_ray_cluster.py", "test_object_store.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the others as collected (the sort is stable)."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name` that `build(folder)` filled, built once a test session, also when the suite runs
    in pytest-xdist workers (`-n 2`, see pyproject's addopts): a whole run built by each would cost its minute
    again. The folder lies in the session's temporary directory, which the workers share; the first to ask
    builds it under a lock, the others wait for it. A build that failed is tried again by the next."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the worker's own is popen-gwN inside the session's
    folder, built = base / name, base / f"{name}.built"
    with FileLock(base / f"{name}.lock"):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def faces() -> dict:
    """identities.json of the shared face corpus, with `images` pointing at the photo folder."""
    labels = json.loads((FACES / "identities.json").read_text())
    return {**labels, "images": FACES / "images"}


# tests.shared_run is imported inside these fixtures: it imports this module, and test_any_image with it.
@pytest.fixture(scope="session")
def corpus(faces: dict) -> Corpus:
    """The labelled photos as the dlib face filter sees them: each detected and embedded once a session (~0.2 s)."""
    from benchmarks.fixtures.crawled_folders import Corpus
    from stages.faces.dlib_backend import DlibBackend

    return Corpus(DlibBackend(upsample=0), faces["images"].parent)


@pytest.fixture(scope="session")
def shared_tree(tmp_path_factory: pytest.TempPathFactory, faces: dict) -> SharedTree:
    """The photos and names of the shared run (tests/shared_run.py), without running anything."""
    from tests.shared_run import build_shared_tree, read_shared_tree

    return read_shared_tree(built_once(tmp_path_factory, "shared", lambda root: build_shared_tree(root, faces)))


@pytest.fixture(scope="session")
def shared_run(shared_tree: SharedTree, tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    """The finished run of the shared tree, read-only: a test that changes a run works on `.copy(...)`."""
    from tests.shared_run import finish_shared_run, read_shared_run

    built = built_once(tmp_path_factory, "shared-run", lambda folder: finish_shared_run(shared_tree, folder / "run"))
    return read_shared_run(shared_tree, built / "run")


@pytest.fixture(scope="session")
def resharded(shared_run: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared run whose shard step ran again with shard.max_rows=1000 (one shard), read-only."""
    from tests.shared_run import reshard

    return built_once(tmp_path_factory, "resharded", lambda folder: reshard(shared_run, folder / "run")) / "run"


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ...` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def stage_rows(out: Path, stage: str) -> list[dict]:
    """Every row of a stage's parts (those with a done-marker), as dicts."""
    rows = []
    for marker in sorted((out / "stages" / stage / "_done").glob("*.json")):
        rows += pq.read_table(out / "stages" / stage / f"part-{marker.stem}.parquet").to_pylist()
    return rows


def image_bytes(size: tuple[int, int], fmt: str = "JPEG", mode: str = "RGB", **save: object) -> bytes:
    """A real encoded image of the given size (a gradient, so encoders do real work)."""
    width, height = size
    image = Image.linear_gradient("L").resize((width, height)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def labelled_tree(root: Path, faces: dict, identities: list[str]) -> Path:
    """`root/photos/<identity>/` with each identity's labelled photos, and `root/names.txt`."""
    for identity in identities:
        folder = root / "photos" / identity
        folder.mkdir(parents=True)
        for photo in faces["identities"][identity]:
            (folder / photo).write_bytes((faces["images"] / photo).read_bytes())
    (root / "names.txt").write_text("\n".join(identities) + "\n")
    return root / "names.txt"


# One actor per stage (scheduling only, in no fingerprint): a test run's few identities fit one, and a second actor
# would only load the stage's models again, a fifth of a small run's CPU time.
ONE_ACTOR = [arg for section in ("crawl", "filter", "verify", "hygiene", "crop", "segment", "caption", "governance")
             for arg in ("--set", f"{section}.resources.concurrency=1")]


def cpu_run_args(names: Path, out: Path | str, photos: Path, *extra: str) -> list[str]:
    """CLI options for a cpu-profile run over local folders; the face limit is below every
    labelled face (each labelled photo shows one clear face of at least ~90 px)."""
    return [
        "--config", "cpu", "--names", str(names), "--out", str(out),
        "--set", "crawl.source=local", "--set", f"crawl.local_root={photos}",
        "--set", "filter.min_face_size=80", *extra,
    ]
