"""The resolution half of the filter stage, on generated images of every awkward kind."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.core.schema import NAMES, PROVENANCE, extend
from stages.faces import open_backend
from stages.faces.dlib_backend import DlibBackend
from stages.faces.insightface_backend import InsightFaceBackend
from stages.filter import FilterStage
from stages.imaging import decode_for_detection, decode_upright
from tests.conftest import image_bytes
from tests.local_tree import png_declaring, rotated_jpeg
from tests.test_any_image import ADOBE, ADOBE_NAME, APPLE, APPLE_NAME, encode, profile_of
from benchmarks.fixtures.tiny_onnx import write_pack


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (700, 700), (shade, shade, shade)) for shade in (40, 120, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def png_16_bit() -> bytes:
    """A real 16-bit greyscale PNG: the full 0..65535 range, which must not clip to black or white."""
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 700 * 700).reshape(700, 700).astype(np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def filter_many(tmp_path, blobs: list[bytes], *overrides: str) -> list[dict]:
    run = RunDir(str(tmp_path / "run"))
    for index, data in enumerate(blobs):
        run.write_bytes(f"raw/x/{index}", data)
    stage = FilterStage(load_config(resolve_profile("cpu"), list(overrides)), run)
    stage.setup()
    rows = pa.Table.from_pylist(
        [{"identity": "x", "image_id": str(i), "status": "ok", "raw_path": f"raw/x/{i}"} for i in range(len(blobs))],
        schema=extend(NAMES, PROVENANCE),
    )
    return stage.process(rows).to_pylist()


def filter_one(tmp_path, data: bytes, *overrides: str) -> dict:
    (row,) = filter_many(tmp_path, [data], *overrides)
    return row


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (image_bytes((800, 600)), "dropped", "no_face"),
        (image_bytes((800, 511)), "dropped", "low_resolution"),
        (image_bytes((2000, 600)), "dropped", "extreme_aspect_ratio"),
        (png_declaring(30000, 30000), "dropped", "decompression_bomb"),
        (image_bytes((900, 900))[:3000], "dropped", "decode_error"),
        (image_bytes((700, 700), mode="CMYK"), "dropped", "no_face"),
        (image_bytes((700, 700), fmt="PNG", mode="P"), "dropped", "no_face"),
        (image_bytes((700, 700), fmt="PNG", mode="LA"), "dropped", "no_face"),
        (image_bytes((700, 700), fmt="WEBP", mode="RGBA"), "dropped", "no_face"),
        (image_bytes((700, 700), fmt="GIF", save_all=True), "dropped", "no_face"),
        (image_bytes((1, 1)), "dropped", "low_resolution"),
        (image_bytes((10000, 50), fmt="PNG"), "dropped", "low_resolution"),
        (animated_webp(), "dropped", "no_face"),
        (png_16_bit(), "dropped", "no_face"),
        (image_bytes((700, 700), icc_profile=b"not a colour profile"), "dropped", "no_face"),
    ],
    ids=["faceless", "low", "panorama", "bomb", "truncated", "cmyk", "palette", "la", "webp", "gif",
         "1x1", "10000x50", "animated-webp", "16bit", "broken-icc"],
)
def test_outcomes(tmp_path, data: bytes, status: str, reason: str | None) -> None:
    """Every colour mode decodes and reaches the detector (`no_face` on a gradient)."""
    row = filter_one(tmp_path, data)
    assert (row["status"], row["reason"]) == (status, reason)


def test_exif_orientation_gives_the_upright_size(tmp_path) -> None:
    row = filter_one(tmp_path, rotated_jpeg())
    assert (row["width"], row["height"], row["exif_orientation"]) == (600, 1000, 6)


@pytest.mark.parametrize("orientation", [0, 9, 128, 65535])
def test_an_out_of_range_exif_orientation_means_no_rotation(tmp_path, orientation: int) -> None:
    """Legal EXIF SHORTs outside 1..8 (ImageOps.exif_transpose leaves those photos as stored): the row goes on."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = image_bytes((1000, 600), exif=exif.tobytes())
    row = filter_one(tmp_path, data)
    assert (row["status"], row["reason"], row["width"], row["height"], row["exif_orientation"]) == (
        "dropped", "no_face", 1000, 600, 1)
    assert decode_upright(data, max_pixels=10**8).size == (1000, 600)


def test_the_colour_profile_is_recorded(tmp_path, faces) -> None:
    """Labelled photos as their camera or phone tagged them; a broken profile falls back to the plain conversion."""
    blobs = [real_photo(faces, name) for name in (ADOBE, APPLE, "img34.jpg")]
    blobs.append(encode(Image.open(faces["images"] / "img34.jpg"), "JPEG", icc=b"not a colour profile"))
    rows = filter_many(tmp_path, blobs, "filter.min_face_size=100", "filter.min_short_side=256")
    assert [row["icc_profile"] for row in rows] == [ADOBE_NAME, APPLE_NAME, None, None]
    assert [row["status"] for row in rows] == ["ok"] * 4
    assert filter_one(tmp_path, image_bytes((300, 200), icc_profile=profile_of(ADOBE)))["icc_profile"] == ADOBE_NAME


def test_thresholds_come_from_the_config(tmp_path) -> None:
    small = image_bytes((400, 300))
    assert filter_one(tmp_path, small)["reason"] == "low_resolution"
    assert filter_one(tmp_path, small, "filter.min_short_side=256")["reason"] == "no_face"
    assert filter_one(tmp_path, image_bytes((800, 600)), "filter.max_pixels=100000")["reason"] == "decompression_bomb"


def test_drops_keep_the_measured_size(tmp_path) -> None:
    row = filter_one(tmp_path, image_bytes((640, 480)))
    assert (row["width"], row["height"], row["detail"]) == (640, 480, "short side 480 < 512")


def real_photo(faces: dict, name: str) -> bytes:
    return (faces["images"] / name).read_bytes()


def test_real_faces_are_kept_with_their_evidence(tmp_path, faces) -> None:
    # img34 (leonardo_dicaprio, 1600x1065, one large face) and couple.jpg (two people)
    single, couple = filter_many(tmp_path, [real_photo(faces, "img34.jpg"), real_photo(faces, "couple.jpg")],
                                 "filter.min_face_size=100", "filter.min_short_side=256")
    assert single["status"] == "ok" and len(single["faces"]) == 1
    face = single["faces"][0]
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= single["width"] and 0 <= y0 < y1 <= single["height"]
    assert len(face["embedding"]) == 128 and abs(np.linalg.norm(face["embedding"]) - 1) < 1e-4
    config = load_config(resolve_profile("cpu"))  # the raw descriptor's norm, as the backend gives it on the same image
    image, _ = decode_for_detection(real_photo(faces, "img34.jpg"), config.filter.max_pixels, config.face.max_side)
    (expected,) = open_backend(config).analyze([np.asarray(image)])[0]
    assert face["embedding_norm"] == pytest.approx(expected.embedding_norm, rel=1e-6)
    assert abs(face["embedding_norm"] - 1) > 0.1
    assert x0 <= face["landmarks"][0] <= x1 and y0 <= face["landmarks"][1] <= y1
    assert single["face_backend"] == "sface" and json.loads(single["face_models"])["backend"] == "sface"
    assert len(single["phash"]) == 16
    assert couple["status"] == "ok" and couple["num_detected"] == 2


def test_small_faces_are_dropped_with_the_size_found(tmp_path, faces) -> None:
    row = filter_one(tmp_path, real_photo(faces, "img34.jpg"), "filter.min_face_size=2000")
    assert row["reason"] == "face_too_small" and row["num_detected"] == 1
    assert row["detail"].startswith("largest face")


def test_exif_rotated_photo_is_detected_upright(tmp_path, faces) -> None:
    """The same photo stored sideways with an EXIF tag gives the same face, in upright pixels."""
    photo = Image.open(faces["images"] / "img38.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90 degrees clockwise; a viewer turns it back
    buffer = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_270).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    upright, sideways = filter_many(tmp_path, [real_photo(faces, "img38.jpg"), buffer.getvalue()],
                                    "filter.min_face_size=100", "filter.min_short_side=256")
    assert sideways["status"] == "ok" and (sideways["width"], sideways["height"]) == (upright["width"], upright["height"])
    assert np.allclose(sideways["faces"][0]["box"], upright["faces"][0]["box"], atol=12)


def test_insightface_backend_runs_through_the_stage(tmp_path, faces) -> None:
    """A pack of tiny random-weight models (the real SCRFD/ArcFace signatures) goes through the
    same path as buffalo_l: plumbing only, never quality."""
    pack = write_pack(tmp_path / "models" / "tinypack", score_bias=20.0)  # fires everywhere
    rows = filter_many(
        tmp_path, [real_photo(faces, "img38.jpg")], "face.backend=insightface", f"face.model={pack}",
        "filter.min_face_size=1", "filter.min_short_side=256",
    )
    (row,) = rows
    assert row["face_backend"] == "insightface" and row["status"] == "ok"
    assert row["num_detected"] >= 1 and all(len(face["embedding"]) == 512 for face in row["faces"])
    models = json.loads(row["face_models"])
    assert models["detector_model"] == "det_tiny.onnx" and len(models["recognizer_sha256"]) == 64


def test_a_missing_insightface_pack_is_a_user_error(tmp_path) -> None:
    config = load_config(resolve_profile("gpu"), [f"face.model_root={tmp_path}"])
    with pytest.raises(UserError, match="buffalo_l") as error:
        FilterStage.preflight(config)
    assert str(tmp_path) in str(error.value)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_the_preflight_checks_the_model_files_without_loading_them(tmp_path, monkeypatch, profile: str) -> None:
    """The driver only looks for the files (a resume of a finished run must not pay for a model load)."""
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"not read by the preflight")
    for backend in (DlibBackend, InsightFaceBackend):
        monkeypatch.setattr(backend, "__init__", pytest.fail)
    FilterStage.preflight(load_config(resolve_profile(profile), [f"face.model_root={tmp_path}"]))


def test_sixteen_bit_greys_keep_their_range_when_decoded() -> None:
    image = decode_upright(png_16_bit(), max_pixels=10**8)
    assert image.mode == "RGB" and image.getextrema()[0] == (0, 255)
