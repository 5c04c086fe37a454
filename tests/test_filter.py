"""The resolution half of the filter stage, on generated images of every awkward kind."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.config import load_config, resolve_profile
from pipeline.rundir import RunDir
from pipeline.schema import NAMES, PROVENANCE, extend
from stages.filter import FilterStage
from tests.conftest import image_bytes
from tests.local_tree import png_declaring, rotated_jpeg


def filter_one(tmp_path, data: bytes, *overrides: str) -> dict:
    run = RunDir(str(tmp_path / "run"))
    run.write_bytes("raw/x/img", data)
    stage = FilterStage(load_config(resolve_profile("cpu"), list(overrides)), run)
    rows = pa.Table.from_pylist(
        [{"identity": "x", "image_id": "abc", "status": "ok", "raw_path": "raw/x/img"}],
        schema=extend(NAMES, PROVENANCE),
    )
    (row,) = stage.process(rows).to_pylist()
    return row


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (image_bytes((800, 600)), "ok", None),
        (image_bytes((800, 511)), "dropped", "low_resolution"),
        (image_bytes((2000, 600)), "dropped", "extreme_aspect_ratio"),
        (png_declaring(30000, 30000), "dropped", "decompression_bomb"),
        (image_bytes((900, 900))[:3000], "dropped", "decode_error"),
        (image_bytes((700, 700), mode="CMYK"), "ok", None),
        (image_bytes((700, 700), fmt="PNG", mode="P"), "ok", None),
        (image_bytes((700, 700), fmt="PNG", mode="I;16"), "ok", None),
        (image_bytes((700, 700), fmt="PNG", mode="LA"), "ok", None),
        (image_bytes((700, 700), fmt="WEBP", mode="RGBA"), "ok", None),
        (image_bytes((700, 700), fmt="GIF", save_all=True), "ok", None),
    ],
    ids=["ok", "low", "panorama", "bomb", "truncated", "cmyk", "palette", "16bit", "la", "webp", "gif"],
)
def test_outcomes(tmp_path, data: bytes, status: str, reason: str | None) -> None:
    row = filter_one(tmp_path, data)
    assert (row["status"], row["reason"]) == (status, reason)


def test_exif_orientation_gives_the_upright_size(tmp_path) -> None:
    row = filter_one(tmp_path, rotated_jpeg())
    assert (row["width"], row["height"], row["exif_orientation"]) == (600, 1000, 6)
    assert row["status"] == "ok"


def test_thresholds_come_from_the_config(tmp_path) -> None:
    small = image_bytes((400, 300))
    assert filter_one(tmp_path, small)["reason"] == "low_resolution"
    assert filter_one(tmp_path, small, "filter.min_short_side=256")["status"] == "ok"
    assert filter_one(tmp_path, image_bytes((800, 600)), "filter.max_pixels=100000")["reason"] == "decompression_bomb"


def test_drops_keep_the_measured_size(tmp_path) -> None:
    row = filter_one(tmp_path, image_bytes((640, 480)))
    assert (row["width"], row["height"], row["detail"]) == (640, 480, "short side 480 < 512")
