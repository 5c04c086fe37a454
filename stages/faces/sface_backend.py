"""OpenCV Zoo on OpenCV's DNN engine (CPU): YuNet detection (5 landmarks) + SFace 128-d embeddings.

Both models are manifest entries (`yunet`, `sface`), int8 files small enough for any CPU machine.
YuNet runs on each image at its own size, so small faces stay small (found from ~10 px; the
labelled faces shrunk to 40 px in a 1280-px photo score >= 0.91, one 0.52), and again on halved
copies down to COARSEST_SIDE: YuNet scores faces over ~450 px of its input 0.55-0.80 (the labelled
photos at full size) and a close-up filling a 1280-px frame 0.66 with a misplaced box, while with
the halved copies every labelled face scores >= 0.93. One NMS keeps the best of all levels.

`face.det_threshold` (0.5) is YuNet's score cut as it is SCRFD's: it keeps every labelled face and
every 40-px one, and drops most of YuNet's stray boxes (0.3-0.5); the few above it on the labelled
photos are real blurred background faces (0.55-0.89) and two false boxes (0.52, 0.76).

SFace runs through `cv2.dnn` directly: under OpenCV 5 `FaceRecognizerSF.feature()` fails to set
its input ("empty name can only be used ... one input"), so only its `alignCrop` (the ArcFace
similarity template, 112x112) is used, and the crop is fed as `FaceRecognizerSF.feature` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.models import locate
from stages.backends import Backend, cpu_threads

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
    has_area,
)

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig

COARSEST_SIDE = 640  # halving stops here: faces up to ~500 px in a 640-px input still score >= 0.85
NMS_IOU = 0.3  # OpenCV Zoo's YuNet default, used within and across pyramid levels
MAX_RECOGNITION_BATCH = 32  # faces per forward pass (each with its mirror), bounds memory on crowd photos
CROP_SIDE = 112


@FACES.register
class SFaceBackend(FaceBackend, Backend):
    name = "sface"
    embedding_dim = 128
    # Measured on tests/data/faces (YuNet + SFace int8, vector of crop + mirror; benchmarks/verify_quality.py):
    # leave-one-out centroid similarity of an identity's own photos >= 0.651 (grayscale copies >= 0.660), of another
    # identity's photo <= 0.412 (the nearest look-alike); any threshold in 0.45-0.60 keeps precision 1.0 and recall
    # 0.986 on the realistic, grayscale and look-alike folders (the one miss: a 1990s group-photo face at 0.44).
    # Mean cosine to an identity's photos (what average linkage cuts): own >= 0.562, other <= 0.375. Copies
    # (re-encoded, cropped, mirrored) >= 0.919, two distinct photos <= 0.888. YuNet scores the labelled target faces
    # >= 0.935 and a real profile 0.73-0.77. Distinct-photo pairs of one person: median 0.766, 90% <= 0.831, max
    # 0.888, so a reference above 0.835 shows the target's shoot (benchmarks/face_quality.py).
    calibration = Calibration(threshold=0.50, cluster_threshold=0.45, dup_similarity=0.905, min_face_score=0.8,
                              copy_paste_max=0.835)
    fields = ("det_threshold", "device")

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["yunet", "sface"]

    @classmethod
    def load(cls, config: PipelineConfig) -> SFaceBackend:
        device = config.face.device
        if device not in ("auto", "cpu"):
            raise UserError(
                f"face.device={device}: the sface backend runs on OpenCV's CPU DNN engine only",
                "set face.device=auto or cpu (face.backend=insightface runs on CUDA)",
            )
        cache = config.models.cache_dir
        return cls(locate("yunet", cache), locate("sface", cache), det_threshold=config.face.det_threshold)

    def __init__(self, yunet: Path, sface: Path, det_threshold: float = 0.5) -> None:
        import cv2

        if threads := cpu_threads():
            cv2.setNumThreads(threads)  # OpenCV's pool is process-wide, a thread per core by default
        self._cv2 = cv2
        self.det_threshold = det_threshold
        # the input size is set per image before each detect; this one is a placeholder
        self._detector = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), det_threshold, NMS_IOU)
        self._aligner = cv2.FaceRecognizerSF.create(str(sface), "")  # loads SFace too, only alignCrop is used
        self._net = cv2.dnn.readNetFromONNX(str(sface))
        self._versions = {
            "backend": self.name,
            "opencv": cv2.__version__,
            "detector_model": yunet.name,
            "detector_sha256": file_sha256(yunet),
            "recognizer_model": sface.name,
            "recognizer_sha256": file_sha256(sface),
            "embedding": "sface(crop) + sface(mirrored crop)",
        }

    def embed(self, images: Sequence[np.ndarray], faces: Sequence[Sequence[Face]]) -> list[list[Face]]:
        check_pairing(images, faces)
        crops = []
        for image, image_faces in zip(images, faces, strict=True):
            bgr = self._bgr(check_image(image))
            crops.extend(self._aligner.alignCrop(bgr, yunet_row(face)) for face in image_faces)
        return attach_embeddings(faces, self._features(crops))

    def _bgr(self, image: np.ndarray) -> np.ndarray:
        return self._cv2.cvtColor(image, self._cv2.COLOR_RGB2BGR)

    def _detect_one(self, image: np.ndarray) -> list[Face]:
        rows = np.concatenate([self._detect_level(level, image.shape) for level in self._pyramid(self._bgr(image))])
        keep = self._cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), self.det_threshold, NMS_IOU)
        faces = []
        for row in rows[np.asarray(keep, dtype=int).reshape(-1)]:
            x, y, w, h = row[:4]
            box = clip_box((x, y, x + w, y + h), image)
            if has_area(box):
                # YuNet's "right eye" is the person's right, on the image's left: already LANDMARK_ORDER
                faces.append(Face(box=box, landmarks=row[4:14].reshape(5, 2).astype(np.float32), score=float(row[14])))
        return faces

    def _pyramid(self, bgr: np.ndarray) -> list[np.ndarray]:
        """The image, then halved copies until the long side is at most COARSEST_SIDE."""
        levels = [bgr]
        while max(levels[-1].shape[:2]) > COARSEST_SIDE:
            height, width = levels[-1].shape[:2]
            size = (max(1, round(width / 2)), max(1, round(height / 2)))
            levels.append(self._cv2.resize(levels[-1], size, interpolation=self._cv2.INTER_AREA))
        return levels

    def _detect_level(self, level: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """YuNet's 15-value rows (box x, y, w, h; 5 landmarks; score) in the full image's pixels."""
        height, width = level.shape[:2]
        self._detector.setInputSize((width, height))
        _, rows = self._detector.detect(level)
        if rows is None:
            return np.empty((0, 15), dtype=np.float32)
        scale = np.ones(15, dtype=np.float32)
        scale[0:14:2], scale[1:14:2] = shape[1] / width, shape[0] / height  # x values, then y values
        return rows * scale

    def _features(self, crops: list[np.ndarray]) -> np.ndarray:
        """Raw vectors of aligned BGR crops: SFace's vector of the crop plus that of its mirror image.

        The sum is mirror-invariant and steadier under re-encoding and cropping: on the labelled photos, copies of a
        photo vs two distinct photos of one person go from 0.894 vs 0.891 (one vector) to 0.919 vs 0.888, which is
        what lets `verify.dup_similarity` separate them; verification figures do not move (benchmarks/verify_quality.py).
        """
        if not crops:
            return np.empty((0, self.embedding_dim), dtype=np.float32)
        out = []
        for start in range(0, len(crops), MAX_RECOGNITION_BATCH):
            chunk = crops[start : start + MAX_RECOGNITION_BATCH]
            vectors = self._sface([*chunk, *(crop[:, ::-1] for crop in chunk)])
            out.append(vectors[: len(chunk)] + vectors[len(chunk) :])
        return np.concatenate(out)

    def _sface(self, crops: list[np.ndarray]) -> np.ndarray:
        """SFace's vectors, input built as `FaceRecognizerSF.feature` builds it: RGB, 0..255, 112x112."""
        blob = self._cv2.dnn.blobFromImages(crops, 1.0, (CROP_SIDE, CROP_SIDE), (0, 0, 0), True, False)
        self._net.setInput(blob, "data")
        return np.array(self._net.forward(), dtype=np.float32).reshape(len(crops), -1)


def yunet_row(face: Face) -> np.ndarray:
    """A face as YuNet's 15-value row, what `alignCrop` reads (it aligns on the landmarks only)."""
    x0, y0, x1, y1 = face.box
    return np.array([x0, y0, x1 - x0, y1 - y0, *face.landmarks.reshape(-1), face.score], dtype=np.float32)
