"""The sanity score: how close the generated face is to the references, by face-embedding cosine.

Generated images are embedded with the configured face backend, which must be the one that
embedded the shards (dlib 128-d and ArcFace 512-d vectors are not comparable). The largest face
of an image is taken as the generated person.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.generator.references import Reference
from stages.faces import Face, FaceBackend, open_backend


def open_scorer(config: PipelineConfig, shard_backends: set[str]) -> FaceBackend:
    settings = config.face
    if shard_backends != {settings.backend}:
        raise UserError(f"the shards were embedded with {', '.join(sorted(shard_backends))}, "
                        f"the config's face backend is {settings.backend}",
                        f"pass the run's profile or --set face.backend={min(shard_backends)}")
    return open_backend(config)


def largest_face(faces: Sequence[Face]) -> Face | None:
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), default=None)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def score_images(
    backend: FaceBackend, images: Sequence[Image.Image], references: Sequence[Reference],
    centroids: dict[str, np.ndarray],
) -> list[dict]:
    """Per image: the face found (or not), its cosine to each reference and to each identity's centroid."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
    scores = []
    for faces in backend.analyze(arrays):
        face = largest_face(faces)
        if face is None or face.embedding is None:
            scores.append({"face_found": False, "face_box": None, "sim_to_references": None, "sim_to_centroid": None})
            continue
        scores.append({
            "face_found": True,
            "face_box": [round(float(v), 1) for v in face.box],
            "sim_to_references": {ref.image_id: round(cosine(face.embedding, ref.embedding), 4) for ref in references},
            "sim_to_centroid": {name: round(cosine(face.embedding, c), 4) for name, c in centroids.items()},
        })
    return scores
