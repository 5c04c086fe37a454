"""Bytes per image through Ray's object store for the GPU model stages: `python -m benchmarks.object_store_bytes`.

On GPUs a model stage's CPU workers run `prepare` and ship its output, pickled, to the model's actors
(pipeline/engine/runner.py: prepare_tasks); the rows themselves go through the run directory. This measures that
pickle per image on the labelled photos (tests/data/faces: 400 to 2,500 px, as web photos are), for filter (the
images shrunk for detection, `face.max_side`) and segment (the decoded crops, `crop.size`), under the gpu
profile and under the settings before issue 27. Target: under 2 MB an image for each.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path

import pyarrow as pa

from benchmarks.common import FACES, REPO
from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.base import ModelStage

TARGET_MB = 2.0
BEFORE = ["face.max_side=1280"]  # the gpu profile before issue 27 (the config's default)


def shipped_mb(stage: ModelStage, rows: pa.Table) -> float:
    """MB per row of what `prepare` ships to the actors, pickled as the runner pickles it."""
    return len(pickle.dumps(stage.prepare(rows))) / rows.num_rows / 1e6


def crawled_rows(run: RunDir, photos: list[Path]) -> pa.Table:
    for photo in photos:
        run.write_bytes(f"raw/someone/{photo.name}", photo.read_bytes())
    return pa.table({"identity": ["someone"] * len(photos), "image_id": [p.stem for p in photos],
                     "raw_path": [f"raw/someone/{p.name}" for p in photos]})


def crops(config: PipelineConfig, run: RunDir, photos: list[Path]) -> pa.Table:
    """The crop stage's kept rows for the photos (faces found by sface, as verify would hand them on)."""
    from benchmarks.fixtures.verified_rows import SCHEMA, detect, verified_row
    from stages.crop import CropStage

    with_faces = [photo for photo in photos if detect(photo, "sface")[2]]
    verified = pa.Table.from_pylist([verified_row(run, photo, backend="sface") for photo in with_faces], schema=SCHEMA)
    table = CropStage(config, run).process(verified)
    return table.filter(pa.compute.equal(table["status"], "ok"))


def measure(photos: list[Path], root: Path) -> dict:
    """Filter under the gpu profile and at face.max_side 1280 (before); segment's encoded crops and, as before,
    their decoded pixels."""
    from stages.filter import FilterStage
    from stages.segment import SegmentStage

    run = RunDir(str(root))
    rows = crawled_rows(run, photos)
    config, before = load_config(resolve_profile("gpu")), load_config(resolve_profile("gpu"), BEFORE)
    kept = crops(config, run, photos)
    shipped = SegmentStage(config, run).prepare(kept)
    decoded = len(pickle.dumps([item.pixels() for item in shipped])) / kept.num_rows / 1e6
    out = {"filter_mb": round(shipped_mb(FilterStage(config, run), rows), 3),
           "filter_mb_before": round(shipped_mb(FilterStage(before, run), rows), 3),
           "segment_mb": round(shipped_mb(SegmentStage(config, run), kept), 3), "segment_mb_before": round(decoded, 3),
           "face.max_side": config.face.max_side, "crop.size": config.crop.size, "crops": kept.num_rows}
    return {**out, "met": {stage: out[f"{stage}_mb"] < TARGET_MB for stage in ("filter", "segment")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/object_store_bytes.json")
    args = parser.parse_args()
    photos = sorted(FACES.glob("images/img*.jpg"))
    with tempfile.TemporaryDirectory() as root:
        result = {"photos": len(photos), "target_mb": TARGET_MB, **measure(photos, Path(root))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
