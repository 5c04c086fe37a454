"""Rows as the verify stage hands them on, built from real photos of tests/data/faces (dlib, or sface).

Faces are detected like the filter stage does (upright image shrunk to 1024, boxes scaled back);
the target face is the largest one, which is what verify picks on these single-identity photos.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE_EVIDENCE, IMAGE_SIZE, NAMES, PROVENANCE, VERIFICATION, extend
from stages.faces import FaceBackend, open_backend
from stages.faces.dlib_backend import DlibBackend
from stages.filter import box_side, face_record
from stages.imaging import decode_upright, shrink

SCHEMA = extend(NAMES, PROVENANCE, IMAGE_SIZE, FACE_EVIDENCE, VERIFICATION)
MAX_PIXELS = 89_478_485


@functools.cache
def _backend(name: str) -> FaceBackend:
    return DlibBackend(upsample=0) if name == "dlib" else open_backend(PipelineConfig(face={"backend": name}))


@functools.cache
def detect(path: Path, backend: str = "dlib") -> tuple[int, int, list[dict]]:
    """Upright size and face records of a photo (cached: the backends are deterministic and slow)."""
    image = decode_upright(path.read_bytes(), MAX_PIXELS)
    small, scale = shrink(image, 1024)
    (faces,) = _backend(backend).analyze([np.asarray(small)])
    return image.width, image.height, [face_record(face, scale) for face in faces]


def verified_row(run: RunDir, photo: Path, identity: str = "someone", backend: str = "dlib") -> dict:
    width, height, faces = detect(photo, backend)
    assert faces, f"{backend} found no face in {photo.name}"
    raw_path = f"raw/{identity}/{photo.name}"
    run.write_bytes(raw_path, photo.read_bytes())
    target = max(range(len(faces)), key=lambda k: box_side(faces[k]["box"]))
    return {
        "identity": identity, "name": identity, "image_id": photo.stem, "status": "ok", "raw_path": raw_path,
        "width": width, "height": height, "faces": faces, "num_detected": len(faces), "face_backend": backend,
        "target_face": target,
    }


def verified_table(run: RunDir, photos: list[Path], identity: str = "someone") -> pa.Table:
    return pa.Table.from_pylist([verified_row(run, photo, identity) for photo in photos], schema=SCHEMA)
