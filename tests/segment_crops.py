"""Crops as the crop stage hands them to segment, from real photos (test and benchmark helper).

Faces come from dlib (or `backend`) as in tests/verified_rows.py; the crop stage itself cuts the crops. A group
photo (identities.json's `group_photos`, and insightface's `t1.jpg`: six people at a table) gives
one crop per detected face, each face the target in turn, so every other face is someone the mask
must leave out. Other photos give one crop, around their largest face.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.crop import CropStage
from tests.verified_rows import SCHEMA, verified_row

FACES = Path(__file__).resolve().parent / "data" / "faces"
FRIENDS = "t1.jpg"


def friends_photo() -> Path:
    """insightface's group photo (shipped with the package)."""
    return Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images" / FRIENDS


def corpus_photos() -> list[Path]:
    """Every photo of tests/data/faces, and the Friends photo."""
    return [*sorted((FACES / "images").glob("*.jpg")), friends_photo()]


def group_names() -> set[str]:
    return {*json.loads((FACES / "identities.json").read_text())["group_photos"], FRIENDS}


def crop_rows(run: RunDir, photos: list[Path], size: int = 512, backend: str = "dlib") -> pa.Table:
    """The crops the crop stage keeps (too small ones are dropped there); `image_id` is `<stem>-<target face>`."""
    groups, rows = group_names(), []
    for photo in photos:
        row = verified_row(run, photo, backend=backend)
        targets = range(len(row["faces"])) if photo.name in groups else [row["target_face"]]
        rows += [{**row, "image_id": f"{photo.stem}-{k}", "target_face": k} for k in targets]
    stage = CropStage(load_config(resolve_profile("cpu"), [f"crop.size={size}"]), run)
    crops = stage.process(pa.Table.from_pylist(rows, schema=SCHEMA))
    return crops.filter(pc.equal(crops["status"], "ok"))
