"""dlib on the CPU: HOG (or CNN "mmod") detection, 68-point landmarks, 128-d ResNet face descriptors.

Weights come from the `face-recognition-models` package. dlib's 5-point predictor marks eye corners
and the base of the nose but no mouth corners, so the 68-point predictor gives the five landmarks;
the descriptor model accepts its shapes too (same aligned chips, same similarities on real photos).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound, UserError
from stages.backends import Backend

from .base import (
    FACES,
    Calibration,
    Face,
    FaceBackend,
    attach_embeddings,
    check_image,
    check_pairing,
    clip_box,
    file_sha256,
)

LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "cnn")
INSTALL_HINT = "pip install face-recognition-models, or point dlib_model_dir at a folder holding the .dat files"

# iBUG 68-point indices: eyes are averaged over their six contour points, then nose tip and mouth corners.
_LEFT_EYE = slice(36, 42)  # the eye on the image's left
_RIGHT_EYE = slice(42, 48)
_NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = 30, 48, 54


def packaged_model_dir() -> Path | None:
    """The `models/` folder of face-recognition-models, found without importing it.

    Its __init__ imports pkg_resources, which recent setuptools no longer ships.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "models"


def model_file(name: str, model_dir: Path | None) -> Path:
    path = model_dir / name if model_dir is not None else None
    if path is None or not path.is_file():
        where = str(model_dir) if model_dir is not None else "face_recognition_models (package not installed)"
        raise ModelNotFound(f"dlib model file {name!r}", [where], INSTALL_HINT)
    return path


def model_files(model_dir: str | None, detector: str) -> dict[str, Path]:
    """The .dat files the backend loads, by role; ModelNotFound (what, where, fix) for a missing one."""
    folder = Path(model_dir).expanduser() if model_dir else packaged_model_dir()
    files = {"landmarks": model_file(LANDMARKS_FILE, folder), "descriptor": model_file(DESCRIPTOR_FILE, folder)}
    if detector == "cnn":
        files["detector"] = model_file(CNN_DETECTOR_FILE, folder)
    return files


def five_points(shape) -> np.ndarray:
    """The five landmarks (LANDMARK_ORDER) from a 68-point dlib shape."""
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    return np.stack(
        [
            points[_LEFT_EYE].mean(axis=0),
            points[_RIGHT_EYE].mean(axis=0),
            points[_NOSE_TIP],
            points[_MOUTH_LEFT],
            points[_MOUTH_RIGHT],
        ]
    )


@FACES.register
class DlibBackend(FaceBackend, Backend):
    name = "dlib"
    fields = ("dlib_detector", "upsample")
    embedding_dim = 128
    # Measured on tests/data/faces (128-d, L2-normalised): leave-one-out centroid similarity of an identity's own
    # photos >= 0.952, of the nearest other identity <= 0.937; pairs: deepface's dlib cut (cosine distance 0.07);
    # copies (resized, re-encoded, cropped, mirrored) >= 0.990, distinct photos <= 0.986. The HOG margin's own
    # detection cut (0) is the score floor (the labelled faces score >= 0.40). Distinct-photo pairs of one person:
    # median 0.968, 90% <= 0.981.
    calibration = Calibration(threshold=0.945, cluster_threshold=0.93, dup_similarity=0.99, min_face_score=0.0,
                              copy_paste_max=0.979)

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        model_files(None, config.face.dlib_detector)

    @classmethod
    def load(cls, config: PipelineConfig) -> DlibBackend:
        if config.face.device not in ("auto", "cpu"):  # dlib-bin is a CPU build: a GPU worker must not run it
            raise UserError(f"face.device={config.face.device}: the dlib backend runs on the CPU only",
                            "set face.device=cpu, or filter.resources.num_gpus=0 "
                            "(face.backend=insightface runs on CUDA)")
        return cls(detector=config.face.dlib_detector, upsample=config.face.upsample)

    def __init__(
        self, model_dir: str | None = None, detector: str = "hog", upsample: int = 1, threshold: float = 0.0
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown dlib detector {detector!r}; choose one of: {', '.join(DETECTORS)}")
        self._files = model_files(model_dir, detector)

        import dlib

        self._dlib = dlib
        self.detector_kind = detector
        self.upsample = upsample
        self.threshold = threshold
        self._predictor = dlib.shape_predictor(str(self._files["landmarks"]))
        self._descriptor = dlib.face_recognition_model_v1(str(self._files["descriptor"]))
        if detector == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(self._files["detector"]))
        else:
            self._detector = dlib.get_frontal_face_detector()
        self._versions = self._describe()

    def _describe(self) -> dict[str, str]:
        out = {"backend": self.name, "dlib": self._dlib.__version__, "detector": self.detector_kind}
        # without the package, the .dat files came from an explicit folder; their hashes identify them
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out["face_recognition_models"] = importlib.metadata.version("face_recognition_models")
        for role, path in self._files.items():
            out[f"{role}_model"] = path.name
            out[f"{role}_sha256"] = file_sha256(path)
        return out

    def embed(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> list[list[Face]]:
        check_pairing(images, faces)
        vectors = [
            self._descriptors(check_image(image), image_faces) for image, image_faces in zip(images, faces, strict=True)
        ]
        return attach_embeddings(faces, np.concatenate(vectors) if vectors else np.empty((0, self.embedding_dim)))

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        faces = []
        for rect, score in self._find(image):
            # dlib's right/bottom are the last pixel inside; boxes here end one past it
            box = clip_box((rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1), image)
            landmarks = five_points(self._predictor(image, rect))
            faces.append(Face(box=box, landmarks=landmarks, score=float(score)))
        return faces

    def _find(self, image: np.ndarray) -> list[tuple[object, float]]:
        """(dlib rectangle, score) pairs at or above the threshold."""
        if self.detector_kind == "hog":
            rects, scores, _ = self._detector.run(image, self.upsample, self.threshold)
            return list(zip(rects, scores, strict=True))
        found = self._detector(image, self.upsample)
        return [(d.rect, d.confidence) for d in found if d.confidence >= self.threshold]

    def _descriptors(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """One 128-d descriptor per face; landmarks are re-fitted on each box, so any caller's boxes work."""
        shapes = self._dlib.full_object_detections()
        for face in faces:
            x0, y0, x1, y1 = (int(round(v)) for v in face.box)
            shapes.append(self._predictor(image, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1)))
        if not len(shapes):
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        return np.asarray(self._descriptor.compute_face_descriptor(image, shapes), dtype=np.float32)
