"""The face of a photo a person sends of themself (a takedown request, a `face:` opt-out entry), embedded
as the run's stored faces are: decoded upright in sRGB, shrunk as filter shrinks, the same backend.
The largest face of each photo is theirs; a photo without a face is a user mistake."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from stages.imaging import ImageRejected, decode_for_detection

from stages.faces.base import FaceBackend


def embed_photos(backend: FaceBackend, config: PipelineConfig, paths: Sequence[Path]) -> np.ndarray:
    """One unit embedding per photo (rows in the order given)."""
    return np.stack([_largest_face(backend, config, Path(path)) for path in paths])


def _largest_face(backend: FaceBackend, config: PipelineConfig, path: Path) -> np.ndarray:
    try:
        image, _ = decode_for_detection(path.read_bytes(), config.filter.max_pixels, config.face.max_side)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", "pass a photo file that exists") from exc
    except ImageRejected as rejected:
        raise UserError(f"{path} is not a usable photo ({rejected.reason}: {rejected.detail})",
                        "pass a JPEG, PNG or WebP photo of the person") from rejected
    faces = backend.analyze([np.asarray(image)])[0]
    if not faces:
        raise UserError(f"no face found in {path}", "pass a photo where the person's face is clearly visible")
    largest = max(faces, key=lambda face: (face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))
    assert largest.embedding is not None
    return largest.embedding.astype(np.float32)


def listed_faces(config: PipelineConfig, paths: Sequence[Path]) -> np.ndarray | None:
    """The unit embeddings of `face:` opt-out entries: `.npy` files as stored, photos embedded (the backend is
    loaded only when a photo is listed); None when nothing is listed."""
    stored = [np.atleast_2d(np.load(path, allow_pickle=False)).astype(np.float32) for path in paths
              if path.suffix == ".npy"]
    photos = [path for path in paths if path.suffix != ".npy"]
    if photos:
        from stages.faces import open_backend  # the package imports this module's siblings: load on demand

        stored.append(embed_photos(open_backend(config), config, photos))
    return np.concatenate(stored) if stored else None
