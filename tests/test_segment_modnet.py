"""The modnet segment backend: MODNet's real weights on real photos, through the segment stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.rundir import RunDir
from stages.crop import decode_crop
from stages.segment import SegmentStage
from stages.segmenters import SEGMENTERS, decode_mask, face_coverage, open_segmenter
from stages.segmenters.modnet import ModnetSegmenter, input_size
from benchmarks.fixtures.segment_crops import FACES, crop_rows

PHOTOS = ("img1.jpg", "img38.jpg", "img57.jpg", "couple.jpg")  # portrait, wide, dark background, two people


def config(*overrides: str):
    return load_config(resolve_profile("cpu"), ["segment.backend=modnet", *overrides])


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> pa.Table:
    return crop_rows(RunDir(str(tmp_path_factory.mktemp("crops"))), [FACES / "images" / name for name in PHOTOS])


@pytest.fixture(scope="module")
def masked(crops, tmp_path_factory) -> dict[str, dict]:
    stage = SegmentStage(config(), RunDir(str(tmp_path_factory.mktemp("segment"))))
    stage.setup()
    return {row["image_id"]: row for row in stage.process(crops).to_pylist()}


def core(box: list[float]) -> list[float]:
    """The middle half of a face box (eyes to mouth): face pixels whatever the head's shape."""
    w, h = box[2] - box[0], box[3] - box[1]
    return [box[0] + w / 4, box[1] + h / 4, box[2] - w / 4, box[3] - h / 4]


def test_input_sides_are_multiples_of_32_with_the_long_side_at_the_reference() -> None:
    assert input_size(1024, 1024, 512) == (512, 512)
    assert input_size(500, 1000, 512) == (512, 256)  # (width, height)
    assert input_size(10, 1000, 320) == (320, 32)


@pytest.mark.slow
def test_a_single_person_mask_covers_the_face_and_not_the_crop(masked) -> None:
    for image_id in ("img1-0", "img38-0", "img57-0"):
        row = masked[image_id]
        assert row["status"] == "ok", row["detail"]
        assert row["mask_source"] == "modnet:512"  # the cpu profile's side
        mask, face = decode_mask(row["mask"]), row["crop_faces"][row["target_face"]]["box"]
        assert mask.shape == (512, 512)
        assert face_coverage(mask, core(face)) == 1.0, image_id
        assert row["mask_face_coverage"] >= 0.8, image_id  # the box's corners reach past the cheeks
        assert row["crop_face_share"] < row["mask_area"] < 0.85, image_id
        assert not mask[:8, :8].any() and not mask[:8, -8:].any(), image_id  # top corners: background


@pytest.mark.slow
def test_in_a_group_photo_each_mask_holds_its_own_face_and_not_the_others(masked) -> None:
    for row in (masked["couple-0"], masked["couple-1"]):  # each of the two faces the target in turn
        assert row["status"] == "ok", row["detail"]
        mask, faces = decode_mask(row["mask"]), row["crop_faces"]
        target, other = faces[row["target_face"]]["box"], faces[1 - row["target_face"]]["box"]
        assert face_coverage(mask, core(target)) == 1.0
        assert face_coverage(np.ones_like(mask), other) > 0.3  # the other face is in the crop...
        assert face_coverage(mask, other) < 0.01  # ...and not in the mask


@pytest.mark.slow
def test_every_labelled_person_in_the_crop_gets_a_mask_of_their_own(crops, tmp_path) -> None:
    """person_masks (docs/multi-identity.md): both people of the couple labelled, each one's mask holds their face."""
    row = next(row for row in crops.to_pylist() if row["image_id"] == "couple-0")
    who = ["angelina_jolie" if k == row["target_face"] else "brad_pitt" for k in range(2)]
    row = {**row, "identity": who[row["target_face"]],
           "faces": [{**face, "identity": name} for face, name in zip(row["faces"], who, strict=True)]}
    stage = SegmentStage(config(), RunDir(str(tmp_path)))
    stage.setup()
    (out,) = stage.process(pa.Table.from_pylist([row], schema=crops.schema)).to_pylist()
    masks = {person["identity"]: decode_mask(person["mask"]) for person in out["person_masks"]}
    assert sorted(masks) == ["angelina_jolie", "brad_pitt"]
    assert np.array_equal(masks[out["identity"]], decode_mask(out["mask"]))  # the target's is `mask`
    for k, name in enumerate(who):
        own, other = row["crop_faces"][k]["box"], row["crop_faces"][1 - k]["box"]
        assert face_coverage(masks[name], core(own)) == 1.0 and face_coverage(masks[name], other) < 0.01, name


@pytest.mark.slow
def test_a_mask_filling_more_than_max_mask_area_is_dropped_with_its_reason(crops, tmp_path) -> None:
    stage = SegmentStage(config("segment.max_mask_area=0.1"), RunDir(str(tmp_path)))
    stage.setup()
    (row,) = stage.process(crops.slice(0, 1)).to_pylist()
    assert (row["status"], row["reason"]) == ("dropped", "mask_fills_crop")
    assert row["mask_area"] > 0.1 and row["detail"].startswith(f"mask fills {row['mask_area']:.0%} of the crop")
    assert row["mask"] is not None and row["mask_face_coverage"] > 0.8  # the evidence is kept


@pytest.mark.slow
def test_a_batch_gives_the_mattes_each_image_gets_alone(crops) -> None:
    # on the CPU on any machine: cuDNN may pick other kernels for other batch sizes, which moves the last bits
    segmenter = open_segmenter(config("segment.modnet_side=256", "segment.device=cpu"))
    images = [decode_crop(data) for data in crops["crop_image"].to_pylist()[:3]]
    together = segmenter.mattes(images)
    for image, matte in zip(images, together, strict=True):
        (alone,) = segmenter.mattes([image])
        assert matte.shape == image.shape[:2] and 0 <= matte.min() and matte.max() <= 1
        np.testing.assert_allclose(matte, alone, atol=1e-4)


def test_a_missing_model_file_names_models_fetch(tmp_path) -> None:
    settings = config(f"models.cache_dir={tmp_path}")
    with pytest.raises(ModelNotFound, match="modnet.onnx") as missing:
        ModnetSegmenter.load(settings)
    assert "models fetch" in missing.value.fix and str(tmp_path) in missing.value.looked_in
    with pytest.raises(UserError, match="segment.backend=modnet") as refused:
        SEGMENTERS.preflight(settings)
    assert "models fetch" in refused.value.fix
