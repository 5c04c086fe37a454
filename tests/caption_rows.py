"""Rows as the crop stage hands them to caption, from real photos of tests/data/faces (test helper).

Each crop is a square 2.5 times the dlib face box (black past the photo), resized and encoded as
JPEG; `crop_faces` holds the face mapped into crop pixels, `target_face` points at it.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.schema import CROP, ROW_KEYS, VERIFICATION, extend
from stages.faces.dlib_backend import DlibBackend
from stages.imaging import decode_upright, shrink

SCHEMA = extend(ROW_KEYS, pa.schema([VERIFICATION.field("target_face"), *CROP]))
SCALE = 2.5


@functools.lru_cache(maxsize=1)
def _backend():
    return DlibBackend(upsample=0)


@functools.cache
def crop_columns(photo: Path, size: int = 256) -> dict:
    """The crop columns of one photo (cached: dlib is deterministic and slow)."""
    image = decode_upright(photo.read_bytes(), 89_478_485)
    small, scale = shrink(image, 1024)
    (faces,) = _backend().detect([np.asarray(small)])
    assert faces, f"dlib found no face in {photo.name}"
    face = max(faces, key=lambda f: f.box[2] - f.box[0])
    box = np.asarray(face.box) * scale
    side = SCALE * max(box[2] - box[0], box[3] - box[1])
    x0, y0 = (box[0] + box[2] - side) / 2, (box[1] + box[3] - side) / 2
    square = tuple(round(v) for v in (x0, y0, x0 + side, y0 + side))
    factor = size / (square[2] - square[0])
    buffer = io.BytesIO()
    image.crop(square).resize((size, size)).save(buffer, "JPEG", quality=90)
    points = face.landmarks * scale - np.array(square[:2])
    return {
        "crop_image": buffer.getvalue(), "crop_format": "JPEG", "crop_size": size, "crop_box": list(square),
        "crop_faces": [{"box": ((box - np.array(square[:2] * 2)) * factor).tolist(),
                        "landmarks": (points * factor).reshape(-1).tolist()}],
        "target_face": 0,
    }


def crop_table(photos: list[Path], identity: str = "someone") -> pa.Table:
    rows = [{"identity": identity, "image_id": p.stem, "status": "ok", **crop_columns(p)} for p in photos]
    return pa.Table.from_pylist(rows, schema=SCHEMA)
