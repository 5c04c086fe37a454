"""The face-backend interface: detect faces, embed them, and say which models did it.

Backends import their heavy libraries (dlib, insightface, onnxruntime) in their constructors, so
importing this package stays cheap.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from stages.backends import Registry

# Order of `Face.landmarks`, in image coordinates: "left" is the image's left (the person's right).
# It is the ArcFace alignment template's order, so any backend's landmarks can feed `norm_crop`.
LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

FACES = Registry("face.backend", "stages.faces")


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise equality ambiguous
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the given image, clipped to it
    landmarks: np.ndarray  # (5, 2) float32 (x, y), in LANDMARK_ORDER
    score: float  # detector confidence, on the detector's own scale (SCRFD: 0..1, dlib HOG: SVM margin)
    embedding: np.ndarray | None = None  # L2-normalised float32 vector, None before embed()
    embedding_norm: float | None = None  # L2 norm of the backend's raw vector: raw = embedding * embedding_norm

    def __post_init__(self) -> None:
        if self.landmarks.shape != (5, 2):
            raise ValueError(f"landmarks must have shape (5, 2), got {self.landmarks.shape}")

    def with_embedding(self, embedding: np.ndarray, norm: float) -> Face:
        return replace(self, embedding=embedding, embedding_norm=norm)


@dataclass(frozen=True)
class Calibration:
    """What the backend's scales mean, measured beside its model: the value of every threshold left null in
    the config. Verify applies it (config values win) and records what it applied in each row's `calibration`,
    which hygiene, the report, training and the generator read; it is part of verify's fingerprint."""

    threshold: float  # verify: face-to-identity-centroid cosine needed to keep an image
    cluster_threshold: float  # verify: average-linkage cosine at which faces join one cluster
    dup_similarity: float  # verify: target-face cosine at which two images count as the same photo
    min_face_score: float | None  # verify.quality: detector score floor on the detector's own scale; None: no gate
    copy_paste_max: float | None  # training: a reference this alike to the target shows its shoot, not the person


class FaceBackend(ABC):
    name: str
    embedding_dim: int
    calibration: Calibration | None = None  # None: uncalibrated, every threshold must be set in the config
    _versions: dict[str, str]  # set once the models are loaded

    def versions(self) -> dict[str, str]:
        """Package versions and model files (name and sha256) that produced this backend's output."""
        return dict(self._versions)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in each image (HxWx3 uint8 RGB), without embeddings."""
        return [self._detect_one(check_image(image)) for image in images]

    @abstractmethod
    def _detect_one(self, image: np.ndarray) -> list[Face]:
        """The faces of one checked image."""

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> list[list[Face]]:
        """The given faces of each image, with `embedding` and `embedding_norm` set."""

    def analyze(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return self.embed(images, self.detect(images))


def check_image(image: np.ndarray) -> np.ndarray:
    """The image as a C-contiguous HxWx3 uint8 array (what dlib and OpenCV require)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    return np.ascontiguousarray(image)


def check_pairing(images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> None:
    if len(images) != len(faces):
        raise ValueError(f"{len(images)} images but {len(faces)} face lists")


def clip_box(box: Sequence[float], image: np.ndarray) -> tuple[float, float, float, float]:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))


def has_area(box: tuple[float, float, float, float]) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def l2_normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length, as float32 (a zero row stays zero rather than becoming NaN), and their norms."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)[:, None], norms


def attach_embeddings(faces: Sequence[Sequence[Face]], vectors: np.ndarray) -> list[list[Face]]:
    """Give each face, in reading order, the next raw row of `vectors`: L2-normalised, with its norm.

    Verification compares the unit vectors; the norm keeps the raw vector (PhotoMaker v2 takes ArcFace's raw one).
    """
    units, norms = l2_normalize(vectors)
    out, start = [], 0
    for image_faces in faces:
        rows = range(start, start + len(image_faces))
        out.append([face.with_embedding(units[k], float(norms[k])) for k, face in zip(rows, image_faces, strict=True)])
        start += len(image_faces)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
