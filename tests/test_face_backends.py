"""Face backends: dlib with its real weights on real labelled photos; insightface's plumbing with tiny
random-weight ONNX models loaded through its real model router (no quality asserted on those)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image, ImageOps

from pipeline.core.errors import ModelNotFound, UserError
from stages.devices import CUDA_OPTIONS, PADDED_BATCHES, onnx_providers
from stages.faces import LANDMARK_ORDER, Face
from stages.faces.base import FACES as FACE_BACKENDS
from stages.faces.base import file_sha256
from stages.faces.dlib_backend import (
    CNN_DETECTOR_FILE,
    DESCRIPTOR_FILE,
    LANDMARKS_FILE,
    DlibBackend,
    packaged_model_dir,
)
from stages.faces.insightface_backend import InsightFaceBackend, aligned_crop
from benchmarks.fixtures.tiny_onnx import write_pack

FACES = Path(__file__).resolve().parent / "data" / "faces"
LABELS = json.loads((FACES / "identities.json").read_text())
# small single-person photos (<= 0.4 MP) of six identities, two of one of them
SMALL = {
    "img5.jpg": "angelina_jolie",
    "img10.jpg": "angelina_jolie",
    "img12.jpg": "jennifer_aniston",
    "img21.jpg": "jeff_bezos",
    "img25.jpg": "sundar_pichai",
    "img46.jpg": "katy_perry",
    "img50.jpg": "scarlett_johansson",
}
EYE_L, EYE_R, NOSE, MOUTH_L, MOUTH_R = range(5)


def load_photo(name: str) -> np.ndarray:
    with Image.open(FACES / "images" / name) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def cosine_matrix(embeddings: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack(embeddings)
    return stacked @ stacked.T


def assert_valid_faces(faces: list[Face], image: np.ndarray, dim: int) -> None:
    height, width = image.shape[:2]
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        assert isinstance(face.score, float)
        assert face.embedding is not None and face.embedding.shape == (dim,)
        assert face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert isinstance(face.embedding_norm, float) and face.embedding_norm > 0


# ---------------------------------------------------------------- dlib, real weights, real photos


@pytest.fixture(scope="module")
def dlib_backend():
    return DlibBackend()


@pytest.fixture(scope="module")
def small_faces(dlib_backend):
    return {name: dlib_backend.analyze([load_photo(name)])[0] for name in SMALL}


def test_labels_cover_the_small_photos():
    for name, identity in SMALL.items():
        assert name in LABELS["identities"][identity]


def test_dlib_finds_one_face_per_single_person_photo(dlib_backend, small_faces):
    assert dlib_backend.name == "dlib" and dlib_backend.embedding_dim == 128
    for name, faces in small_faces.items():
        assert len(faces) == 1, name
        assert_valid_faces(faces, load_photo(name), 128)


def test_dlib_landmarks_sit_on_the_face_in_the_documented_order(small_faces):
    assert LANDMARK_ORDER == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    for name, (face,) in small_faces.items():
        x0, y0, x1, y1 = face.box
        margin = 0.1 * (x1 - x0)
        points = face.landmarks
        assert np.all((points[:, 0] > x0 - margin) & (points[:, 0] < x1 + margin)), name
        assert np.all((points[:, 1] > y0 - margin) & (points[:, 1] < y1 + margin)), name
        assert points[EYE_L, 0] < points[EYE_R, 0] and points[MOUTH_L, 0] < points[MOUTH_R, 0], name
        assert max(points[EYE_L, 1], points[EYE_R, 1]) < points[NOSE, 1] < min(points[MOUTH_L, 1], points[MOUTH_R, 1])


def test_dlib_same_person_is_closer_than_others(small_faces):
    names = list(SMALL)
    sims = cosine_matrix([small_faces[name][0].embedding for name in names])
    jolie = sims[names.index("img5.jpg"), names.index("img10.jpg")]
    others = [sims[i, j] for i, j in itertools.combinations(range(len(names)), 2) if SMALL[names[i]] != SMALL[names[j]]]
    assert jolie > 0.95 and max(others) < 0.92


def test_dlib_group_photo_has_two_different_people(dlib_backend):
    faces = dlib_backend.analyze([load_photo("couple.jpg")])[0]
    assert len(faces) == 2
    assert_valid_faces(faces, load_photo("couple.jpg"), 128)
    assert faces[0].embedding @ faces[1].embedding < 0.9


def test_dlib_embedding_norm_is_the_raw_descriptors_norm(small_faces):
    """The descriptor recomputed with dlib's own calls on the stored box: unit vector times norm gives it back."""
    import dlib

    folder = packaged_model_dir()
    predictor = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
    recognizer = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_FILE))
    for name, (face,) in small_faces.items():
        image = load_photo(name)
        x0, y0, x1, y1 = (round(v) for v in face.box)  # the box ends one past dlib's last pixel
        shape = predictor(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        raw = np.asarray(recognizer.compute_face_descriptor(image, shape), dtype=np.float32)
        assert abs(np.linalg.norm(raw) - 1) > 0.1, name  # dlib's descriptors are not unit vectors: the norm matters
        assert face.embedding_norm == pytest.approx(np.linalg.norm(raw), rel=1e-4), name
        np.testing.assert_allclose(face.embedding * face.embedding_norm, raw, atol=1e-4)


def test_dlib_embed_takes_given_faces(dlib_backend, small_faces):
    image = load_photo("img5.jpg")
    bare = [Face(box=f.box, landmarks=f.landmarks, score=f.score) for f in small_faces["img5.jpg"]]
    again = dlib_backend.embed([image, image], [bare, []])
    assert again[1] == []
    np.testing.assert_allclose(again[0][0].embedding, small_faces["img5.jpg"][0].embedding, atol=1e-6)
    assert again[0][0].embedding_norm == pytest.approx(small_faces["img5.jpg"][0].embedding_norm, rel=1e-6)
    assert again[0][0].box == bare[0].box and bare[0].embedding is None and bare[0].embedding_norm is None
    with pytest.raises(ValueError, match="2 images but 1 face lists"):
        dlib_backend.embed([image, image], [bare])


def test_dlib_versions_name_the_model_files(dlib_backend):
    versions = dlib_backend.versions()
    assert versions["detector"] == "hog" and versions["dlib"]
    assert versions["landmarks_model"] == LANDMARKS_FILE and versions["descriptor_model"] == DESCRIPTOR_FILE
    assert versions["descriptor_sha256"] == file_sha256(packaged_model_dir() / DESCRIPTOR_FILE)


def test_dlib_rejects_non_rgb_uint8_input(dlib_backend):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        dlib_backend.detect([np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        dlib_backend.detect([np.zeros((32, 32, 3), dtype=np.float32)])


def test_dlib_cnn_detector_agrees_with_hog(small_faces):
    cnn = DlibBackend(detector="cnn", upsample=0)
    faces = cnn.analyze([load_photo("img5.jpg")])[0]
    assert len(faces) == 1 and cnn.versions()["detector_model"] == CNN_DETECTOR_FILE
    assert faces[0].embedding @ small_faces["img5.jpg"][0].embedding > 0.97


def test_dlib_missing_models_say_which_file_where_and_how(tmp_path):
    with pytest.raises(ModelNotFound) as missing:
        DlibBackend(model_dir=str(tmp_path))
    message = str(missing.value)
    assert isinstance(missing.value, FileNotFoundError)
    assert LANDMARKS_FILE in message and str(tmp_path) in message and "pip install face-recognition-models" in message

    for name in (LANDMARKS_FILE, DESCRIPTOR_FILE):  # everything but the CNN detector
        (tmp_path / name).symlink_to(packaged_model_dir() / name)
    DlibBackend(model_dir=str(tmp_path))
    with pytest.raises(ModelNotFound, match=CNN_DETECTOR_FILE):
        DlibBackend(model_dir=str(tmp_path), detector="cnn")


def test_unknown_backend_and_detector_are_errors():
    with pytest.raises(UserError, match="dlib, insightface"):
        FACE_BACKENDS.get("facenet")
    with pytest.raises(ValueError, match="hog, cnn"):
        DlibBackend(detector="mtcnn")


@pytest.mark.slow
def test_dlib_separates_identities_on_the_whole_labelled_set():
    """Measured with dlib 20.0.1 (upsample 0 and 1 alike): same-identity cosine 0.925..0.994 (mean 0.967),
    different 0.715..0.935 (mean 0.831), ROC-AUC 0.99998; leave-one-out identity centroids classify all
    62 photos (smallest margin 0.03, img35)."""
    backend = DlibBackend(upsample=0)  # 4x faster than 1 and, here, no false detections
    labels, embeddings = [], []
    for identity, names in LABELS["identities"].items():
        for name in names:
            faces = backend.analyze([load_photo(name)])[0]
            assert len(faces) == 1, name
            labels.append(identity)
            embeddings.append(faces[0].embedding)
    sims = cosine_matrix(embeddings)
    pairs = list(itertools.combinations(range(len(labels)), 2))
    same = np.array([sims[i, j] for i, j in pairs if labels[i] == labels[j]])
    diff = np.array([sims[i, j] for i, j in pairs if labels[i] != labels[j]])
    auc = (same[:, None] > diff[None, :]).mean()
    assert auc >= 0.999 and same.min() > 0.92 and diff.max() < 0.94
    assert same.mean() - diff.mean() > 0.12
    assert all(
        nearest_centroid(sims.shape[0], i, labels, np.stack(embeddings)) == labels[i] for i in range(len(labels))
    )


def nearest_centroid(count: int, held_out: int, labels: list[str], embeddings: np.ndarray) -> str:
    """The identity whose centroid (without the held-out photo) is most similar to it."""
    scores = {}
    for identity in set(labels):
        members = [k for k in range(count) if labels[k] == identity and k != held_out]
        centroid = embeddings[members].mean(axis=0)
        scores[identity] = embeddings[held_out] @ centroid / np.linalg.norm(centroid)
    return max(scores, key=scores.get)


# ---------------------------------------------------------------- insightface, tiny random models

DET_SIZE = 128  # small input: with every anchor firing, NMS stays cheap


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    return {
        "firing": write_pack(root / "firing", score_bias=20.0),
        "silent": write_pack(root / "silent", score_bias=-20.0),
        "batch1": write_pack(root / "batch1", score_bias=20.0, recognizer_batch=1),
    }


@pytest.fixture(scope="module")
def firing(packs):
    return InsightFaceBackend(str(packs["firing"]), device="cpu", det_size=DET_SIZE)


def hand_faces(image: np.ndarray, count: int) -> list[Face]:
    """Faces placed by hand along the diagonal: ArcFace's template landmarks, scaled and shifted."""
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], dtype=np.float32)
    side = min(image.shape[:2]) / (count + 1)
    faces = []
    for k in range(count):
        points = template * (side / 112) + k * side
        faces.append(Face(box=(k * side, k * side, (k + 1) * side, (k + 1) * side), landmarks=points, score=1.0))
    return faces


def raw_arcface(pack: Path, image: np.ndarray, face: Face) -> np.ndarray:
    """ArcFace by hand: insightface's alignment, then RGB scaled to [-1, 1] straight into onnxruntime."""
    crop = aligned_crop(image, face.landmarks, 112)  # insightface's norm_crop; channel order does not matter to it
    blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    session = onnxruntime.InferenceSession(str(pack / "w600k_tiny.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input.1": blob})[0][0]


def test_insightface_router_loads_a_tiny_pack(firing, packs):
    assert firing.name == "insightface" and firing.embedding_dim == 512
    versions = firing.versions()
    assert versions["detector_model"] == "det_tiny.onnx" and versions["recognizer_model"] == "w600k_tiny.onnx"
    assert versions["providers"] == "CPUExecutionProvider"
    assert versions["recognizer_sha256"] == file_sha256(packs["firing"] / "w600k_tiny.onnx")


def test_insightface_pack_by_name_under_a_root(tmp_path):
    write_pack(tmp_path / "models" / "tinypack")
    write_pack(tmp_path / "models" / "nested" / "nested")  # antelopev2's zip unpacks one level deeper
    for name in ("tinypack", "nested"):
        backend = InsightFaceBackend(name, root=str(tmp_path), det_size=DET_SIZE)
        assert backend.versions()["pack"] == name


def test_insightface_missing_pack_names_the_path_and_never_downloads(tmp_path, monkeypatch):
    import insightface.utils.storage

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(insightface.utils.storage, "download_file", no_download)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelNotFound) as missing:
        InsightFaceBackend()
    expected = tmp_path / ".insightface" / "models" / "buffalo_l"
    assert str(expected) in str(missing.value) and "unzip" in str(missing.value)
    assert missing.value.looked_in == [str(expected)]

    with pytest.raises(ModelNotFound, match="no_such_pack"):
        InsightFaceBackend("no_such_pack", root=str(tmp_path))


def test_insightface_pack_without_detector_is_an_error(tmp_path):
    write_pack(tmp_path / "reconly", detector=False)
    with pytest.raises(ModelNotFound, match="detection model"):
        InsightFaceBackend(str(tmp_path / "reconly"))


def test_insightface_detect_returns_faces_per_image(firing, packs):
    from insightface.model_zoo import get_model

    images = [load_photo("img5.jpg"), load_photo("img25.jpg")]
    found = firing.detect(images)
    assert len(found) == 2 and all(found)
    reference = get_model(str(packs["firing"] / "det_tiny.onnx"), providers=["CPUExecutionProvider"])
    reference.prepare(0, input_size=(DET_SIZE, DET_SIZE), det_thresh=0.5)
    for image, faces in zip(images, found, strict=True):
        for face in faces:
            x0, y0, x1, y1 = face.box
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
            assert 0.5 <= face.score <= 1.0
        boxes, _ = reference.detect(np.ascontiguousarray(image[..., ::-1]))  # insightface takes BGR
        clipped = np.clip(boxes[:, :4], 0, [image.shape[1], image.shape[0]] * 2)
        kept = clipped[(clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])]
        np.testing.assert_allclose(np.array([face.box for face in faces]), kept, rtol=1e-5)


def test_insightface_silent_detector_finds_nothing(packs):
    backend = InsightFaceBackend(str(packs["silent"]), det_size=DET_SIZE)
    assert backend.detect([load_photo("img5.jpg"), load_photo("img25.jpg")]) == [[], []]
    assert backend.analyze([load_photo("img5.jpg")]) == [[]]


def test_insightface_embed_is_unit_norm_aligned_arcface_with_its_raw_norm(firing, packs):
    image = load_photo("img25.jpg")
    (face,) = firing.embed([image], [hand_faces(image, 1)])[0]
    raw = raw_arcface(packs["firing"], image, face)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(face.embedding, raw / np.linalg.norm(raw), atol=1e-5)
    assert abs(np.linalg.norm(raw) - 1) > 0.1  # like real ArcFace output, not a unit vector: the norm matters
    assert face.embedding_norm == pytest.approx(np.linalg.norm(raw), rel=1e-5)


def test_insightface_batched_embeddings_equal_one_by_one(firing, packs):
    images = [load_photo("img5.jpg"), load_photo("img25.jpg")]
    faces = [hand_faces(images[0], 2), hand_faces(images[1], 1)]
    batched = [face for image_faces in firing.embed(images, faces) for face in image_faces]
    single = [
        firing.embed([image], [[face]])[0][0]
        for image, image_faces in zip(images, faces, strict=True)
        for face in image_faces
    ]
    assert len(batched) == 3
    for one, many in zip(single, batched, strict=True):
        np.testing.assert_allclose(many.embedding, one.embedding, atol=1e-5)
        assert many.embedding_norm == pytest.approx(one.embedding_norm, rel=1e-5)  # each face keeps its own norm
    assert not np.allclose(batched[0].embedding, batched[1].embedding, atol=1e-3)  # the input matters

    fixed = InsightFaceBackend(str(packs["batch1"]), device="cpu", det_size=DET_SIZE)  # as `firing`: same arithmetic
    for one, many in zip(itertools.chain(*fixed.embed(images, faces)), batched, strict=True):
        np.testing.assert_allclose(one.embedding, many.embedding, atol=1e-5)  # same weights, batch of 1


def test_padded_arcface_batches_give_each_face_its_own_embedding(firing):
    """On CUDA ArcFace's batches are padded with blank crops to a few fixed sizes; the padding changes no face's
    embedding (here on the CPU session, padded as a CUDA one is)."""
    image = load_photo("img5.jpg")
    faces = [hand_faces(image, 3)]
    padding = copy.copy(firing)
    padding._batch_sizes = PADDED_BATCHES
    (plain,), (padded,) = firing.embed([image], faces), padding.embed([image], faces)
    for one, other in zip(plain, padded, strict=True):
        np.testing.assert_allclose(other.embedding, one.embedding, atol=1e-5)
    assert not np.allclose(plain[0].embedding, plain[1].embedding, atol=1e-3)  # the faces differ


def test_insightface_analyze_embeds_every_detection(firing):
    image = load_photo("img5.jpg")
    (faces,) = firing.analyze([image])
    assert faces and all(face.embedding is not None and face.embedding.shape == (512,) for face in faces)
    assert firing.embed([image], [[]]) == [[]]


def test_providers_prefer_cuda_when_onnxruntime_has_it(monkeypatch):
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert onnx_providers("auto") == [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    on_one = {**CUDA_OPTIONS, "device_id": 1}
    assert onnx_providers("cuda:1") == [("CUDAExecutionProvider", on_one), "CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="CPU build of onnxruntime.*onnxruntime-gpu"):  # never a silent CPU run
        onnx_providers("cuda")
    with pytest.raises(UserError, match="unknown device"):
        onnx_providers("tpu")


@pytest.mark.parametrize("threads", ["1", None])
def test_onnx_sessions_hold_to_the_cpus_ray_gives_the_actor(monkeypatch, threads):
    """Ray sets OMP_NUM_THREADS to an actor's CPUs; unset, each library keeps its default (0: a thread per core)."""
    from pipeline.core.config import load_config, resolve_profile
    from stages.captioners.age_gender import AgeGenderEstimator
    from stages.classifiers.open_nsfw import OpenNsfw
    from stages.segmenters.modnet import ModnetSegmenter

    if threads is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
    config = load_config(resolve_profile("cpu"))
    estimator = AgeGenderEstimator.load(config)
    sessions = [ModnetSegmenter.load(config).session, OpenNsfw.load(config)._session, estimator._age, estimator._gender]
    assert [s.get_session_options().intra_op_num_threads for s in sessions] == [int(threads or 0)] * 4
