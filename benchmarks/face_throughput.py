"""Faces per second of the face filter: a bare loop over the backend vs the stage on Ray.

    python benchmarks/face_throughput.py [--backend dlib|insightface] [--model DIR]

Uses every labelled photo of tests/data/faces, one folder per identity, `--repeat` times. The bare loop decodes,
shrinks and detects+embeds exactly as the stage does, in one process; the stage runs through the
runner on a local Ray instance (model loads and actor start-up included) with one actor, so the
two do the same work on the same cores. With no --model, insightface runs a pack of tiny
random-weight models: a measure of the plumbing, not of SCRFD/ArcFace speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a private Ray on loopback
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.driver import connect, execute
from pipeline.engine.runner import TaskExecutor, plan_stage
from stages.crawl import CrawlStage
from stages.faces import open_backend
from stages.filter import FilterStage
from stages.imaging import decode_for_detection

FACES = REPO / "tests" / "data" / "faces"


def build_folders(root: Path, repeat: int) -> list[Identity]:
    """One folder per labelled identity, the whole set `repeat` times (start-up costs amortise)."""
    labels = json.loads((FACES / "identities.json").read_text())["identities"]
    people = []
    for round_ in range(repeat):
        for identity, photos in labels.items():
            folder = root / f"{identity}_{round_}"
            folder.mkdir(parents=True)
            for photo in photos:
                (folder / photo).symlink_to(FACES / "images" / photo)
            people.append(Identity(folder.name, folder.name))
    return people


def bare_loop(config, paths: list[Path]) -> tuple[int, float]:
    backend = open_backend(config.face)
    started, faces = time.perf_counter(), 0
    for path in paths:
        image, _ = decode_for_detection(path.read_bytes(), config.filter.max_pixels, config.face.max_side)
        faces += len(backend.analyze([np.asarray(image)])[0])
    return faces, time.perf_counter() - started


def through_ray(config, run: RunDir, people: list[Identity]) -> tuple[int, float]:
    crawl = TaskExecutor(CrawlStage, None, config, run.uri)
    for spec in plan_stage(CrawlStage, None, config, run, people).todo:
        crawl.execute(spec)
    connect(None)
    started = time.perf_counter()
    execute(FilterStage, CrawlStage, config, run, plan_stage(FilterStage, CrawlStage, config, run, people))
    seconds = time.perf_counter() - started
    faces = sum(len(row["faces"] or []) for row in _rows(run, people))
    return faces, seconds


def _rows(run: RunDir, people: list[Identity]) -> list[dict]:
    return [row for person in people for row in run.read_table(f"stages/filter/part-{person.slug}.parquet").to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="dlib", choices=("dlib", "insightface"))
    parser.add_argument("--model", help="insightface pack directory (default: tiny random models)")
    parser.add_argument("--repeat", type=int, default=3, help="times the photo set is processed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        people = build_folders(root / "photos", args.repeat)
        model = args.model or _tiny_pack(root) if args.backend == "insightface" else "buffalo_l"
        overrides = [f"face.backend={args.backend}", f"face.model={model}", "crawl.source=local",
                     f"crawl.local_root={root / 'photos'}", "filter.min_short_side=1", "filter.min_face_size=1",
                     "filter.resources.concurrency=1"]
        config = load_config(resolve_profile("cpu"), overrides)
        paths = sorted(p for p in (root / "photos").rglob("*.jpg"))
        loop_faces, loop_seconds = bare_loop(config, paths)
        ray_faces, ray_seconds = through_ray(config, RunDir(str(root / "run")), people)
    loop_rate, ray_rate = loop_faces / loop_seconds, ray_faces / ray_seconds
    print(f"backend {args.backend}: {len(paths)} photos")
    print(f"  bare loop      {loop_faces:4d} faces in {loop_seconds:6.1f} s  {loop_rate:6.2f} faces/s")
    print(f"  stage on Ray   {ray_faces:4d} faces in {ray_seconds:6.1f} s  {ray_rate:6.2f} faces/s")
    print(f"  ratio stage/bare loop: {ray_rate / loop_rate:.2f} (target >= 0.8)")


def _tiny_pack(root: Path) -> str:
    from tests.tiny_onnx import write_pack

    return str(write_pack(root / "models" / "tiny", score_bias=0.0))


if __name__ == "__main__":
    main()
