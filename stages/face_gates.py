"""The quality gates verify applies to each image's target face, from the evidence filter stored once.

Each gate is a threshold of `verify.quality` with its own drop reason. They read stored numbers only,
so a new threshold re-runs verify and never a detector. The target is known only after verification
(it is the face that matches the identity), which is why the gates live here and not in the filter.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import FaceQualitySection
from pipeline.core.reasons import BLURRY_FACE, EXTREME_POSE, LOW_FACE_SCORE, MANY_FACES, SMALL_FACE_SHARE
from stages.base import Row
from stages.faces import Calibration

# A face at least half the target's side (a quarter of its area) competes with it in a crop; background faces do not.
LARGE_FACE_RATIO = 0.5


@dataclass(frozen=True)
class Gates:
    """`verify.quality` with the detector-score floor of the face backend's applied calibration."""

    min_sharpness: float
    max_yaw: float
    max_pitch: float
    min_image_share: float
    min_face_score: float | None
    max_large_faces: int | None

    @classmethod
    def of(cls, section: FaceQualitySection, calibration: Calibration) -> Gates:
        return cls(
            min_sharpness=section.min_sharpness,
            max_yaw=section.max_yaw,
            max_pitch=section.max_pitch,
            min_image_share=section.min_image_share,
            min_face_score=calibration.min_face_score,
            max_large_faces=section.max_large_faces,
        )


def _side(face: Row) -> float:
    x0, y0, x1, y1 = face["box"]
    return max(x1 - x0, y1 - y0)


def large_faces(faces: list[Row], target: int) -> int:
    """Faces of the image at least LARGE_FACE_RATIO of the target's side, the target included."""
    side = _side(faces[target])
    return sum(_side(face) >= LARGE_FACE_RATIO * side for face in faces)


def _pose(face: Row, gates: Gates) -> str | None:
    yaw, pitch = face.get("yaw"), face.get("pitch")
    if yaw is None or pitch is None or (abs(yaw) <= gates.max_yaw and abs(pitch) <= gates.max_pitch):
        return None
    return f"yaw {yaw:+.0f}, pitch {pitch:+.0f} degrees (limits {gates.max_yaw:g}, {gates.max_pitch:g})"


def _below(value: float | None, minimum: float | None, what: str, digits: int) -> str | None:
    if value is None or minimum is None or value >= minimum:
        return None
    return f"{what} {value:.{digits}f} < {minimum:g}"


def failures(faces: list[Row], target: int, gates: Gates) -> list[tuple[str, str]]:
    """(reason, detail) of every gate the target face fails, the most specific cause first.

    A face without the evidence (rows made before filter measured it) passes the gates that need it:
    there is nothing to decide from, and the runner re-runs such a filter before verify reads it.
    """
    face = faces[target]
    count = large_faces(faces, target)
    checks = [
        (EXTREME_POSE, _pose(face, gates)),
        (BLURRY_FACE, _below(face.get("sharpness"), gates.min_sharpness, "sharpness", 1)),
        (LOW_FACE_SCORE, _below(face.get("score"), gates.min_face_score, "detector score", 3)),
        (SMALL_FACE_SHARE, _below(face.get("image_share"), gates.min_image_share, "face share of the image", 4)),
        (MANY_FACES, None if gates.max_large_faces is None or count <= gates.max_large_faces
         else f"{count} large faces > {gates.max_large_faces}"),
    ]
    return [(reason, detail) for reason, detail in checks if detail is not None]
