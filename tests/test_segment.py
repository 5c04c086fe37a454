"""The segment stage: mask plumbing and selection with controlled inputs (MODNet on real photos: test_segment_modnet)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.core.schema import CROP, extend
from stages.segment import SegmentStage
from stages.segmenters import PersonMask, Prompt, Segmenter, decode_mask, encode_mask, face_coverage
from stages.segmenters.yolo_sam import negative_points, pick_mask, pick_person
from benchmarks.fixtures.verified_rows import SCHEMA

CROP_SCHEMA = extend(SCHEMA, CROP)


def config(*overrides: str):
    return load_config(resolve_profile("cpu"), list(overrides))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (512, 512)])
def test_masks_round_trip_as_one_bit_png(shape) -> None:
    mask = np.random.default_rng(0).random(shape) > 0.5
    data = encode_mask(mask)
    assert Image.open(io.BytesIO(data)).mode == "1" and np.array_equal(decode_mask(data), mask)


def test_face_coverage_counts_the_pixels_a_box_touches() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    assert face_coverage(mask, [0, 0, 10, 10]) == 0.5
    assert face_coverage(mask, [1.5, 2, 4.2, 3]) == 1.0
    assert face_coverage(mask, [20, 20, 30, 30]) == 0.0  # outside the crop


def test_the_person_box_holding_the_face_is_picked() -> None:
    face = [40, 20, 60, 40]
    off_centre, centred, elsewhere = [35, 0, 140, 100], [10, 0, 90, 100], [70, 0, 100, 100]
    assert pick_person(face, np.array([off_centre, centred, elsewhere], np.float32)) == 1
    half_out = [50, 0, 150, 100]  # holds half the face, centred on its edge
    assert pick_person(face, np.array([half_out, off_centre], np.float32)) == 1
    assert pick_person(face, np.array([elsewhere, [55, 0, 90, 100]], np.float32)) is None  # holds 25% at most
    assert pick_person(face, np.zeros((0, 4), np.float32)) is None


def test_the_mask_covering_the_face_is_picked_and_sam_breaks_ties() -> None:
    face = [4, 4, 8, 8]
    only_face, whole_person, background = (np.zeros((16, 16), bool) for _ in range(3))
    only_face[4:8, 4:8] = whole_person[2:16, 2:12] = True
    background[:, 12:] = True
    masks = np.stack([background, only_face, whole_person])
    assert pick_mask(face, masks, np.array([0.9, 0.5, 0.8])) == 2  # both cover the face: SAM's score decides
    assert pick_mask(face, masks, np.array([0.9, 0.8, 0.5])) == 1
    assert pick_mask(face, masks[[0]], np.array([0.9])) == 0


def test_only_other_faces_inside_the_person_box_become_negative_points() -> None:
    points = negative_points(np.array([0, 0, 100, 100]), [(10, 10, 30, 30), (150, 10, 170, 30)])
    assert points.tolist() == [[20, 20]]
    assert negative_points(np.array([0, 0, 100, 100]), []).shape == (0, 2)


def test_missing_weights_are_a_user_error_naming_the_file(tmp_path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path}/yolov8x.pt") as missing:
        SegmentStage.preflight(config("segment.backend=yolo_sam", f"segment.weights_dir={tmp_path}"))
    assert "segment.yolo_weights" in missing.value.fix and "ultralytics/assets" in missing.value.fix
    (tmp_path / "yolov8x.pt").touch()
    with pytest.raises(UserError, match="sam_vit_l_0b3195.pth") as missing:
        SegmentStage.preflight(config("segment.backend=yolo_sam", f"segment.weights_dir={tmp_path}",
                                      "segment.sam_model=vit_l"))
    assert "segment.sam_checkpoint" in missing.value.fix and "segment_anything/sam_vit_l" in missing.value.fix
    SegmentStage.preflight(config())  # the cpu profile's MODNet file is in the model cache


class Stub(Segmenter):
    """Hands back fixed masks, to test what the stage decides from them."""

    source = "stub"

    def __init__(self, masks: list[np.ndarray | None]) -> None:
        self.masks = masks

    def segment(self, images, prompts: list[Prompt]) -> list[PersonMask | None]:
        return [None if m is None else PersonMask(m, (0.0, 0.0, 1.0, 1.0)) for m in self.masks[: len(images)]]


def crop_row(size: int, crop_box: list[int], width: int, height: int, face: list[float]) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "gray").save(buffer, "PNG")
    padding = 1 - min(width, crop_box[2]) * min(height, crop_box[3]) / (crop_box[2] - crop_box[0]) ** 2
    return {"identity": "x", "image_id": "a", "status": "ok", "width": width, "height": height, "target_face": 0,
            "crop_image": buffer.getvalue(), "crop_size": size, "crop_box": crop_box, "crop_padding": padding,
            "crop_faces": [{"box": face, "landmarks": [0.0] * 10}]}


def judge(rows: list[dict], masks: list[np.ndarray | None], *overrides: str) -> list[dict]:
    stage = SegmentStage(config(*overrides), RunDir("unused"))
    stage.segmenter = Stub(masks)
    return stage.process(pa.Table.from_pylist(rows, schema=CROP_SCHEMA)).to_pylist()


def test_no_mask_or_a_mask_missing_the_face_is_dropped() -> None:
    row = crop_row(100, [0, 0, 100, 100], 100, 100, [40, 10, 60, 30])
    left = np.zeros((100, 100), bool)
    left[:, :50] = True  # covers half the face box
    missed, nothing = judge([row, row], [left, None], "segment.min_face_coverage=0.6")
    assert (missed["status"], missed["reason"], missed["mask_face_coverage"]) == ("dropped", "no_person_mask", 0.5)
    assert missed["detail"] == "mask covers 50% of the face box (< 60%)" and missed["mask"] is not None
    assert (nothing["reason"], nothing["mask_source"], nothing["mask"]) == ("no_person_mask", "stub", None)
    (kept,) = judge([row], [left], "segment.min_face_coverage=0.5")
    assert kept["status"] == "ok" and kept["mask_area"] == 0.5 and np.array_equal(decode_mask(kept["mask"]), left)


def test_padding_is_never_the_person() -> None:
    # a 100x200 photo in a 200 px square starting 50 px left of it, rendered at 100 px: photo columns 25..74
    row = crop_row(100, [-50, 0, 150, 200], 100, 200, [40, 10, 60, 30])
    (kept,) = judge([row], [np.ones((100, 100), bool)])
    mask = decode_mask(kept["mask"])
    assert mask[:, 25:75].all() and not mask[:, :25].any() and not mask[:, 75:].any()
    assert kept["mask_area"] == pytest.approx(0.5) and row["crop_padding"] == pytest.approx(0.5)
