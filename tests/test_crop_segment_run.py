"""Crop then segment (cpu profile) through the runner's task executor, in-process: parts, markers, resume."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import Marker, part_path, read_markers, write_marker
from pipeline.engine.runner import TaskExecutor, content_digest, plan_stage
from stages.crop import CropStage
from stages.segment import SegmentStage
from stages.segmenters import decode_mask
from benchmarks.fixtures.verified_rows import verified_table

PHOTOS = {"george_clooney": ["img38.jpg", "img39.jpg", "img40.jpg", "img41.jpg"], "elon_musk": ["img18.jpg", "img19.jpg"]}


class Verify:
    """Stands in for the verify stage: only its name is read, to find its parts and markers."""

    name = "verify"


def write_verify_output(run: RunDir, faces: dict) -> list[Identity]:
    for slug, names in PHOTOS.items():
        table = verified_table(run, [faces["images"] / name for name in names], slug)
        run.write_table(part_path("verify", slug), table)
        write_marker(run, Marker("verify", slug, "x", "x", content_digest(table), len(names), len(names), {"ok": len(names)}))
    return [Identity(slug, slug) for slug in PHOTOS]


def run_stage(stage, upstream, config, run, people) -> int:
    plan = plan_stage(stage, upstream, config, run, people)
    executor = TaskExecutor(stage, upstream.name, config, run.uri)
    results = [executor.execute(spec) for spec in plan.todo]
    assert all(result.error is None for result in results), results
    return len(plan.todo)


@pytest.mark.slow
def test_crop_then_segment_writes_parts_and_resumes(tmp_path, faces) -> None:
    run = RunDir(str(tmp_path / "run"))
    people = write_verify_output(run, faces)
    config = load_config(resolve_profile("cpu"), ["crop.size=512"])
    assert run_stage(CropStage, Verify, config, run, people) == 2
    assert run_stage(SegmentStage, CropStage, config, run, people) == 2

    for slug, names in PHOTOS.items():
        crops, masks = run.read_table(part_path("crop", slug)), run.read_table(part_path("segment", slug))
        assert crops.num_rows == len(names) and crops["status"].to_pylist() == ["ok"] * len(names)
        assert masks["image_id"].to_pylist() == crops["image_id"].to_pylist()
        for row in masks.filter(pc.equal(masks["status"], "ok")).to_pylist():
            assert decode_mask(row["mask"]).shape == (512, 512) and row["mask_source"].startswith("modnet:")
        assert read_markers(run, "segment")[slug].rows_out == len(names)

    assert run_stage(CropStage, Verify, config, run, people) == 0  # resumed: nothing to redo
    assert run_stage(SegmentStage, CropStage, config, run, people) == 0
    stricter = load_config(resolve_profile("cpu"), ["crop.size=512", "segment.min_face_coverage=0.99"])
    assert run_stage(CropStage, Verify, stricter, run, people) == 0  # a segment threshold never re-crops
    assert run_stage(SegmentStage, CropStage, stricter, run, people) == 2
    reasons = set(pc.unique(run.read_table(part_path("segment", "george_clooney"))["reason"]).to_pylist())
    assert "no_person_mask" in reasons
