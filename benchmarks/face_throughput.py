"""Faces per second of the face filter: a bare loop over each backend, and the stage on Ray.

    python benchmarks/face_throughput.py [--backend sface|dlib|insightface ...] [--bare] [--model DIR]

Uses every labelled photo of tests/data/faces, one folder per identity, `--repeat` times. The bare loop decodes,
shrinks and detects+embeds exactly as the stage does, in one process; the stage runs through the
runner on a local Ray instance (model loads and actor start-up included) with one actor, so the
two do the same work on the same cores (`--bare`: the loop only). With several backends (default
sface and dlib) it ends with their bare-loop rates relative to the first. Backends find different
numbers of faces (YuNet finds background faces from ~10 px, dlib HOG at upsample 0 none under ~80 px),
so photos/s is printed beside faces/s. With no --model, insightface runs a pack of tiny
random-weight models: a measure of the plumbing, not of SCRFD/ArcFace speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
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


def bare_loop(config, paths: list[Path]) -> tuple[int, float, float]:
    """Faces found, wall seconds, and CPU seconds of this process (all its threads: a steadier
    figure than wall time on a shared machine)."""
    backend = open_backend(config)
    started, cpu_started, faces = time.perf_counter(), time.process_time(), 0
    for path in paths:
        image, _ = decode_for_detection(path.read_bytes(), config.filter.max_pixels, config.face.max_side)
        faces += len(backend.analyze([np.asarray(image)])[0])
    return faces, time.perf_counter() - started, time.process_time() - cpu_started


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


@dataclass(frozen=True)
class Rate:
    photos: int
    faces: int
    seconds: float
    cpu_seconds: float | None = None  # measured for the bare loop only (Ray's work runs in other processes)

    def __str__(self) -> str:
        per_photo = f"{self.photos / self.seconds:6.2f} photos/s"
        text = f"{self.faces:4d} faces in {self.seconds:6.1f} s  {self.faces / self.seconds:6.2f} faces/s  {per_photo}"
        if self.cpu_seconds is None:
            return text
        return f"{text}  (CPU {self.cpu_seconds:.1f} s: {self.photos / self.cpu_seconds:.2f} photos per CPU-second)"


def measure(backend: str, args: argparse.Namespace, root: Path, people: list[Identity], paths: list[Path]) -> Rate:
    """The bare loop's rate; prints it, and the stage's on Ray unless --bare."""
    model = args.model or _tiny_pack(root) if backend == "insightface" else "buffalo_l"
    overrides = [
        f"face.backend={backend}",
        f"face.model={model}",
        "crawl.source=local",
        f"crawl.local_root={root / 'photos'}",
        "filter.min_short_side=1",
        "filter.min_face_size=1",
        "filter.resources.concurrency=1",
    ]
    config = load_config(resolve_profile("cpu"), overrides)
    loop = Rate(len(paths), *bare_loop(config, paths))
    print(f"backend {backend}: {len(paths)} photos")
    print(f"  bare loop      {loop}")
    if not args.bare:
        ray = Rate(len(paths), *through_ray(config, RunDir(str(root / f"run-{backend}")), people))
        print(f"  stage on Ray   {ray}")
        print(f"  ratio stage/bare loop: {ray.faces / ray.seconds / (loop.faces / loop.seconds):.2f} (target >= 0.8)")
    return loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        action="append",
        choices=("sface", "dlib", "insightface"),
        help="repeat to compare (default: sface and dlib)",
    )
    parser.add_argument("--bare", action="store_true", help="the bare loop only, no stage on Ray")
    parser.add_argument("--model", help="insightface pack directory (default: tiny random models)")
    parser.add_argument("--repeat", type=int, default=3, help="times the photo set is processed")
    args = parser.parse_args()
    backends = args.backend or ["sface", "dlib"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        people = build_folders(root / "photos", args.repeat)
        paths = sorted(p for p in (root / "photos").rglob("*.jpg"))
        rates = {backend: measure(backend, args, root, people, paths) for backend in backends}
    first, base = next(iter(rates.items()))
    for backend, rate in list(rates.items())[1:]:
        faces = (base.faces / base.seconds) / (rate.faces / rate.seconds)
        photos, cpu = rate.seconds / base.seconds, rate.cpu_seconds / base.cpu_seconds
        print(
            f"{first} vs {backend} (bare loop): {faces:.2f}x faces/s, {photos:.2f}x photos/s, {cpu:.2f}x photos/CPU-s"
        )


def _tiny_pack(root: Path) -> str:
    from benchmarks.fixtures.tiny_onnx import write_pack

    return str(write_pack(root / "models" / "tiny", score_bias=0.0))


if __name__ == "__main__":
    main()
