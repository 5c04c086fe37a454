"""The sface backend (YuNet + SFace on OpenCV) with its real int8 models, on the real labelled photos.

The models are the manifest's `yunet` and `sface` entries in the model cache (`python -m pipeline models fetch`).
"""

from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.core.config import FaceSection, PipelineConfig
from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.models import locate, manifest
from stages.faces import FACES, LANDMARK_ORDER, Face
from stages.faces.sface_backend import CROP_SIDE, SFaceBackend, yunet_row
from tests.conftest import FACES as FACE_DATA
from benchmarks.fixtures.crawled_folders import scene

EYE_L, EYE_R, NOSE, MOUTH_L, MOUTH_R = range(5)
# two photos each of six identities, all <= 1.4 MP (frontal or near-frontal faces)
PAIRS = {
    "angelina_jolie": ("img5.jpg", "img10.jpg"),
    "jennifer_aniston": ("img12.jpg", "img53.jpg"),
    "katy_perry": ("img44.jpg", "img46.jpg"),
    "scarlett_johansson": ("img50.jpg", "img51.jpg"),
    "jeff_bezos": ("img20.jpg", "img21.jpg"),
    "matt_damon": ("img29.jpg", "img31.jpg"),
}
FRONTAL = ("img5.jpg", "img12.jpg", "img29.jpg", "img50.jpg")


def config(cache_dir: Path | None = None, **face: object) -> PipelineConfig:
    models = {"cache_dir": str(cache_dir)} if cache_dir else {}
    return PipelineConfig.model_validate({"face": {"backend": "sface", **face}, "models": models})


def load_photo(name: str) -> np.ndarray:
    """The photo upright, its long side shrunk to 1280 px as the filter does before detection (face.max_side)."""
    with Image.open(FACE_DATA / "images" / name) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((1280, 1280))
    return np.asarray(image)


@pytest.fixture(scope="module")
def backend() -> SFaceBackend:
    return FACES.get("sface").load(config())


@pytest.fixture(scope="module")
def main_faces(backend) -> dict[str, Face]:
    """The most confident face of each photo of PAIRS (the labelled person)."""
    names = [name for pair in PAIRS.values() for name in pair]
    return {name: backend.analyze([load_photo(name)])[0][0] for name in names}


def test_the_registry_builds_it_from_the_config(backend, faces) -> None:
    assert FACES.get("sface") is SFaceBackend and isinstance(backend, SFaceBackend)
    assert (backend.name, backend.embedding_dim) == ("sface", 128)
    assert set(SFaceBackend.fields) <= set(FaceSection.model_fields)
    assert SFaceBackend.model_names(config()) == ["yunet", "sface"]
    assert {manifest()[name].backend for name in SFaceBackend.model_names(config())} == {"face.sface"}
    for identity, pair in PAIRS.items():
        assert set(pair) <= set(faces["identities"][identity])


def test_faces_are_valid_unit_vectors_with_their_raw_norm(main_faces) -> None:
    for name, face in main_faces.items():
        height, width = load_photo(name).shape[:2]
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, name
        assert face.landmarks.dtype == np.float32 and face.score >= 0.9, name
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.embedding_norm > 1


def test_landmarks_follow_the_project_order(backend) -> None:
    """YuNet's "right eye" is the person's right, on the image's left: LANDMARK_ORDER's left_eye."""
    assert LANDMARK_ORDER == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    for name in FRONTAL:
        image = load_photo(name)
        points = backend.detect([image])[0][0].landmarks
        assert points[EYE_L, 0] < points[NOSE, 0] < points[EYE_R, 0], name
        assert points[MOUTH_L, 0] < points[MOUTH_R, 0], name
        assert max(points[EYE_L, 1], points[EYE_R, 1]) < points[NOSE, 1] < min(points[MOUTH_L, 1], points[MOUTH_R, 1])
        # in the mirrored photo the same eye is found on the other side: the order is by image side, not by person
        mirrored = backend.detect([np.ascontiguousarray(image[:, ::-1])])[0][0].landmarks
        flipped_back = np.column_stack([image.shape[1] - mirrored[:, 0], mirrored[:, 1]])[[1, 0, 2, 4, 3]]
        # (YuNet is not exactly mirror-symmetric: a few pixels; a swapped order would be off by the eye distance)
        np.testing.assert_allclose(flipped_back, points, atol=0.15 * (points[EYE_R, 0] - points[EYE_L, 0]))


def test_the_same_person_is_closer_than_any_other(main_faces) -> None:
    identity = {name: who for who, pair in PAIRS.items() for name in pair}
    same, different = [], []
    for a, b in itertools.combinations(main_faces, 2):
        similarity = float(main_faces[a].embedding @ main_faces[b].embedding)
        (same if identity[a] == identity[b] else different).append(similarity)
    assert min(same) > max(different) + 0.05, (sorted(same)[:3], sorted(different)[-3:])


def test_faces_of_40_to_50_px_are_found_in_a_large_photo(backend) -> None:
    """Four people shrunk to 40-50 px faces in a 1280 x 960 scene: each found where it was put, at its size."""
    canvas = np.asarray(Image.fromarray(scene_image(3)).resize((1280, 960))).copy()
    photos = ("img5.jpg", "img20.jpg", "img29.jpg", "img50.jpg")
    placed = [
        (paste_shrunk(backend, canvas, name, side, (300 + 150 * (k % 2), 100 + 290 * k)), side)
        for k, (name, side) in enumerate(zip(photos, (40, 44, 48, 50), strict=True))
    ]
    found = backend.detect([canvas])[0]
    for (cx, cy), side in placed:
        hits = [f for f in found if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
        assert len(hits) == 1, (side, [f.box for f in found])
        assert 0.7 * side <= max(hits[0].box[2] - hits[0].box[0], hits[0].box[3] - hits[0].box[1]) <= 1.4 * side


def paste_shrunk(backend, canvas: np.ndarray, name: str, side: int, at: tuple[int, int]) -> tuple[float, float]:
    """Paste the photo's surroundings of its face, shrunk so the face box's longer side is `side` px, with its
    top-left corner at `at` (row, column); returns the face's centre in the canvas."""
    image = load_photo(name)
    x0, y0, x1, y1 = backend.detect([image])[0][0].box
    scale = side / max(x1 - x0, y1 - y0)
    small = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale))))
    fx, fy = round(x0 * scale), round(y0 * scale)  # the face's corner in the shrunk photo
    left, top = max(fx - side, 0), max(fy - side, 0)  # a face's side of margin around it
    patch = small[top : fy + 2 * side, left : fx + 2 * side]
    canvas[at[0] : at[0] + patch.shape[0], at[1] : at[1] + patch.shape[1]] = patch
    return at[1] + fx - left + side / 2, at[0] + fy - top + side / 2


def test_a_close_up_filling_the_frame_is_found(backend) -> None:
    """YuNet scores faces of many hundred pixels low; the halved copies find them."""
    image = load_photo("img40.jpg")
    x0, y0, x1, y1 = backend.detect([image])[0][0].box
    half = 0.55 * max(x1 - x0, y1 - y0)  # the face box covers ~90% of the square around it
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop = image[round(cy - half) : round(cy + half), round(cx - half) : round(cx + half)]
    close_up = np.asarray(Image.fromarray(crop).resize((1280, 1280)))
    (face, *_) = backend.detect([close_up])[0]
    assert face.score >= 0.8 and face.box[2] - face.box[0] > 640


def test_a_faceless_scene_has_no_face(backend) -> None:
    for seed in range(3):
        assert backend.analyze([scene_image(seed)]) == [[]]


def test_embed_on_given_faces_equals_analyze(backend) -> None:
    """Faces as stored rows give them back (box, landmarks lists): the embeddings are the analyzed ones."""
    image = load_photo("couple.jpg")
    analyzed = backend.analyze([image])[0]
    assert len(analyzed) >= 2
    given = [
        Face(
            box=tuple(f.box),
            landmarks=np.asarray(f.landmarks.ravel().tolist(), np.float32).reshape(5, 2),
            score=f.score,
        )
        for f in analyzed
    ]
    embedded = backend.embed([load_photo("img5.jpg"), image], [[], given])
    assert embedded[0] == [] and len(embedded[1]) == len(analyzed)
    for a, b in zip(analyzed, embedded[1], strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
        assert a.embedding_norm == pytest.approx(b.embedding_norm, rel=1e-6)
    assert analyzed[0].embedding @ analyzed[1].embedding < 0.4  # two different people
    assert backend.analyze([]) == [] and backend.embed([], []) == []


def test_the_raw_vector_is_sface_of_the_aligned_crop_plus_its_mirror(backend, main_faces) -> None:
    """OpenCV's own calls on the stored landmarks give back embedding * norm (the documented raw vector)."""
    aligner = cv2.FaceRecognizerSF.create(str(locate("sface")), "")
    net = cv2.dnn.readNetFromONNX(str(locate("sface")))
    for name in ("img5.jpg", "img20.jpg"):
        face = main_faces[name]
        crop = aligner.alignCrop(cv2.cvtColor(load_photo(name), cv2.COLOR_RGB2BGR), yunet_row(face))
        raw = 0
        for view in (crop, np.ascontiguousarray(crop[:, ::-1])):
            net.setInput(cv2.dnn.blobFromImage(view, 1.0, (CROP_SIDE, CROP_SIDE), (0, 0, 0), True, False), "data")
            raw = raw + net.forward().ravel()
        np.testing.assert_allclose(face.embedding * face.embedding_norm, raw, rtol=1e-4, atol=1e-4)


def test_versions_name_the_model_files_and_their_sha256(backend) -> None:
    versions = backend.versions()
    assert versions["backend"] == "sface" and versions["opencv"] == cv2.__version__
    for role, entry in (("detector", "yunet"), ("recognizer", "sface")):
        assert versions[f"{role}_model"] == manifest()[entry].file
        assert versions[f"{role}_sha256"] == manifest()[entry].sha256


def test_a_missing_model_file_names_the_fetch_command(tmp_path) -> None:
    empty = config(cache_dir=tmp_path)
    for call in (SFaceBackend.check, SFaceBackend.load):
        with pytest.raises(ModelNotFound, match="models fetch") as missing:
            call(empty)
        assert str(tmp_path) in str(missing.value) and "face_detection_yunet" in str(missing.value)
    shutil.copy(locate("yunet"), tmp_path)  # only the recognizer missing: the error names it
    with pytest.raises(ModelNotFound, match="face_recognition_sface.*models fetch"):
        SFaceBackend.load(empty)


def test_a_gpu_device_is_refused_in_one_line() -> None:
    with pytest.raises(UserError, match="face.device=cuda.*CPU"):
        SFaceBackend.load(config(device="cuda"))


def scene_image(seed: int) -> np.ndarray:
    """A rendered landscape with shapes (no face), as RGB pixels."""
    with Image.open(io.BytesIO(scene(seed))) as image:
        return np.asarray(image.convert("RGB"))
