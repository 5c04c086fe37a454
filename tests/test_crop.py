"""Crop geometry as properties (any face, any image shape, both border policies), then real pixels."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.config import CropSection, load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.crop import CropStage, crop_square, face_share
from benchmarks.fixtures.verified_rows import SCHEMA, verified_table


@st.composite
def scenes(draw, max_side: int = 6000) -> tuple[int, int, list[float]]:
    """An image size and a face box inside it: tiny to image-filling, anywhere, borders included."""
    width, height = draw(st.integers(32, max_side)), draw(st.integers(32, max_side))
    fw = draw(st.floats(8, width))
    fh = min(fw * draw(st.floats(0.6, 1.6)), height)
    x0, y0 = draw(st.floats(0, width - fw)), draw(st.floats(0, height - fh))
    return width, height, [x0, y0, x0 + fw, y0 + fh]


crop_settings = st.builds(
    CropSection, scale=st.floats(1, 6), face_share=st.floats(0.02, 0.5), border=st.sampled_from(["shift", "pad"])
)


def least_side(face: list[float]) -> int:
    return max(math.ceil(face[2]) - math.floor(face[0]), math.ceil(face[3]) - math.floor(face[1]))


@given(scenes(), crop_settings)
@settings(max_examples=500, deadline=None)
def test_the_face_is_inside_and_covers_the_share(scene, config: CropSection) -> None:
    width, height, face = scene
    square = crop_square(face, width, height, config)
    x0, y0, x1, y1 = square.box
    assert x0 <= face[0] and face[2] <= x1 and y0 <= face[1] and face[3] <= y1
    assert face_share(face, square) >= config.face_share or square.side == least_side(face)
    if config.border == "shift" and least_side(face) <= min(width, height):
        assert square.padding(width, height) == 0


@given(scenes(), crop_settings.filter(lambda c: c.border == "pad"))
@settings(max_examples=300, deadline=None)
def test_padded_crops_are_centred_and_no_tighter_than_asked(scene, config: CropSection) -> None:
    width, height, face = scene
    square = crop_square(face, width, height, config)
    assert abs(square.x0 + square.side / 2 - (face[0] + face[2]) / 2) <= 1
    assert abs(square.y0 + square.side / 2 - (face[1] + face[3]) / 2) <= 1
    if square.side > least_side(face):  # a person-centred view, not a face crop
        loosest = max(config.face_share, 1 / config.scale**2)
        assert face_share(face, square) <= loosest * ((square.side + 1) / square.side) ** 2


def crop_table(run: RunDir, table: pa.Table, *overrides: str) -> list[dict]:
    return CropStage(load_config(resolve_profile("cpu"), list(overrides)), run).process(table).to_pylist()


def crop_synthetic(tmp_path, width: int, height: int, face: list[int], *overrides: str) -> dict:
    """A PNG photo in three tones: red channel 255 on the face box only, green 200 on the whole photo (the
    padding has neither), and one landmark at the face centre; cropped by the stage."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 1] = 200
    pixels[face[1] : face[3], face[0] : face[2], 0] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    run = RunDir(str(tmp_path / "run"))
    run.write_bytes("raw/x/face.png", buffer.getvalue())
    centre = [(face[0] + face[2]) / 2, (face[1] + face[3]) / 2] * 5
    row = {"identity": "x", "image_id": "face", "status": "ok", "raw_path": "raw/x/face.png", "width": width,
           "height": height, "faces": [{"box": face, "landmarks": centre, "score": 1.0, "embedding": []}],
           "target_face": 0}
    (out,) = crop_table(run, pa.Table.from_pylist([row], schema=SCHEMA), *overrides)
    return out


@given(scenes(max_side=700), st.sampled_from(["shift", "pad"]), st.integers(96, 256))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mapped_boxes_land_on_the_face_pixels(tmp_path, scene, border: str, size: int) -> None:
    width, height, box = scene
    face = [math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])]
    overrides = (f"crop.border={border}", f"crop.size={size}", "crop.format=png", "crop.max_upscale=100")
    row = crop_synthetic(tmp_path, width, height, face, *overrides)
    crop = np.asarray(Image.open(io.BytesIO(row["crop_image"])))
    assert crop.shape == (size, size, 3) and row["crop_format"] == "PNG"
    rows, cols = np.nonzero(crop[..., 0] > 127)  # the face, cut halfway up its resampled edges
    mapped = row["crop_faces"][0]
    found = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert np.allclose(found, mapped["box"], atol=1.5), (found, mapped["box"])
    centre = [(mapped["box"][0] + mapped["box"][2]) / 2, (mapped["box"][1] + mapped["box"][3]) / 2]
    assert np.allclose(mapped["landmarks"][:2], centre, atol=1e-3)
    padding = (crop[..., 1] < 100).mean()  # no green: outside the photo
    assert abs(padding - row["crop_padding"]) < 4 / size, (padding, row["crop_padding"])  # up to 1 px per side


def test_a_small_source_region_is_dropped(tmp_path) -> None:
    small = crop_synthetic(tmp_path, 600, 600, [250, 250, 350, 350], "crop.size=1024")
    assert (small["status"], small["reason"]) == ("dropped", "crop_too_small")
    assert small["detail"] == "source square 300 px, 1024 px wanted (max upscale 2.0)"
    kept = crop_synthetic(tmp_path, 600, 600, [250, 250, 350, 350], "crop.size=512")
    assert kept["status"] == "ok" and kept["crop_box"] == [150, 150, 450, 450]


@pytest.mark.parametrize(("fmt", "magic"), [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_formats_and_quality(tmp_path, fmt: str, magic: bytes) -> None:
    face = [300, 200, 400, 300]
    best = crop_synthetic(tmp_path, 700, 500, face, f"crop.format={fmt}", "crop.size=256", "crop.quality=100")
    worst = crop_synthetic(tmp_path, 700, 500, face, f"crop.format={fmt}", "crop.size=256", "crop.quality=5")
    assert best["crop_image"].startswith(magic) and Image.open(io.BytesIO(best["crop_image"])).size == (256, 256)
    assert (len(worst["crop_image"]) < len(best["crop_image"])) == (fmt != "png")  # PNG is lossless


def test_real_photos_give_person_centred_crops(tmp_path, faces) -> None:
    # portrait (img1, 1382x1868), landscape (img38, 1275x675), two people (couple.jpg), square (img33)
    photos = [faces["images"] / name for name in ("img1.jpg", "img38.jpg", "couple.jpg", "img33.jpg")]
    run = RunDir(str(tmp_path / "run"))
    table = verified_table(run, photos)
    rows = crop_table(run, table, "crop.size=512")
    assert [row["status"] for row in rows] == ["ok"] * 4
    for source, row in zip(table.to_pylist(), rows):
        assert len(row["crop_faces"]) == len(source["faces"]) and row["crop_padding"] == 0
        assert row["crop_face_share"] >= 0.1
        x0, y0, x1, y1 = row["crop_faces"][row["target_face"]]["box"]
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
        eyes = row["crop_faces"][row["target_face"]]["landmarks"][:4]
        assert x0 <= eyes[0] < eyes[2] <= x1 and y0 <= min(eyes[1], eyes[3]) <= y1


def test_an_exif_rotated_photo_is_cropped_upright(tmp_path, faces) -> None:
    """The same photo stored sideways with an EXIF tag: same boxes (upright pixels), same crop."""
    run = RunDir(str(tmp_path / "run"))
    (upright,) = verified_table(run, [faces["images"] / "img38.jpg"]).to_pylist()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise; a viewer turns it back
    buffer = io.BytesIO()
    Image.open(faces["images"] / "img38.jpg").transpose(Image.Transpose.ROTATE_90).save(
        buffer, "JPEG", exif=exif.tobytes(), quality=95
    )
    run.write_bytes("raw/someone/sideways.jpg", buffer.getvalue())
    sideways = {**upright, "image_id": "sideways", "raw_path": "raw/someone/sideways.jpg"}
    first, second = crop_table(run, pa.Table.from_pylist([upright, sideways], schema=SCHEMA), "crop.size=512")
    assert second["crop_box"] == first["crop_box"] and second["crop_faces"] == first["crop_faces"]
    a, b = (np.asarray(Image.open(io.BytesIO(row["crop_image"])), dtype=float) for row in (first, second))
    assert np.abs(a - b).mean() < 4  # JPEG re-encoding only
