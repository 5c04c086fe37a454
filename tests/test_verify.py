"""Verify stage: identity decisions from real dlib embeddings of the shared labelled photos.

Rows are built the way the face filter writes them (benchmarks/fixtures/crawled_folders.py); only the tests
about the algorithm's geometry (order, empty input, phash groups, contracts) use made-up vectors.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.core.schema import VERIFICATION
from pipeline.core.markers import part_path, read_markers
from pipeline.engine.runner import RUN, TaskExecutor
from stages.faces import FACES, Calibration, applied_calibration
from stages.faces.dlib_backend import DlibBackend
from stages.filter import FilterStage
from stages.verify import VerifyStage
from tests.conftest import REPO
from benchmarks.fixtures.crawled_folders import (
    GROUP_FACES,
    QUALITY_IDENTITIES,
    ROWS,
    Corpus,
    Photo,
    build_folder,
    face_at,
    reencoded,
    score,
)

DLIB_THRESHOLD = 0.945


@pytest.fixture
def verify(tmp_path):
    """`verify(rows, "verify.key=value", ...)` -> the stage's output as a list of dicts."""

    def run(rows: pa.Table, *overrides: str) -> list[dict]:
        config = load_config(resolve_profile("cpu"), list(overrides))
        return VerifyStage(config, RunDir(str(tmp_path / "run"))).process(rows).to_pylist()

    return run


def table(corpus: Corpus, photos: list[Photo], identity: str = "someone") -> pa.Table:
    return pa.Table.from_pylist([corpus.row(identity, photo) for photo in photos], schema=ROWS)


def labelled(corpus: Corpus, *names: str) -> list[Photo]:
    return [corpus.labelled(name) for name in names]


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["image_id"]: row for row in rows}


# ------------------------------------------------------------- decisions on real embeddings


def test_wrong_hits_are_dropped_and_the_identity_kept(corpus, verify) -> None:
    own = labelled(corpus, "img13.jpg", "img14.jpg", "img15.jpg", "img57.jpg", "img58.jpg")  # mark_zuckerberg
    wrong = labelled(corpus, "img26.jpg", "img38.jpg")  # katy_perry, george_clooney
    out = by_id(verify(table(corpus, own + wrong)))
    for photo in own:
        row = out[photo.image_id]
        assert (row["status"], row["reason"], row["target_face"]) == ("ok", None, 0)
        assert row["sim_to_centroid"] >= DLIB_THRESHOLD and row["runner_up_sim"] is None
    for photo in wrong:
        row = out[photo.image_id]
        assert (row["status"], row["reason"]) == ("dropped", "not_target_identity")
        assert row["sim_to_centroid"] < DLIB_THRESHOLD and str(DLIB_THRESHOLD) in row["detail"]
    for row in out.values():
        assert (row["cluster_size"], row["identity_kept"], row["identity_competing"]) == (5, 5, False)
        assert row["identity_purity"] == pytest.approx(5 / 7)


def test_the_target_face_in_group_photos_is_the_identity(corpus, verify) -> None:
    own = labelled(corpus, "img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg")  # angelina_jolie
    groups = labelled(corpus, "couple.jpg", "selfie-many-people.jpg")
    out = by_id(verify(table(corpus, own + groups)))
    for photo in groups:
        row = out[photo.image_id]
        assert row["status"] == "ok"
        assert row["target_face"] == face_at(photo, GROUP_FACES[photo.name]["angelina_jolie"])
        assert row["runner_up_sim"] < DLIB_THRESHOLD < row["sim_to_centroid"]
    # the co-star beside her in both group photos is a cluster of its own, but no rival identity
    costar = verify(table(corpus, own + groups), "verify.min_images=2", "verify.competing_ratio=0.3")
    assert {row["identity_competing"] for row in costar} == {False}


def test_an_image_never_vouches_for_itself(corpus, verify) -> None:
    """Leave-one-out: a photo's similarity is to the centroid of the others, not 1.0 for a lone cluster member."""
    own = labelled(corpus, "img29.jpg", "img30.jpg", "img31.jpg")  # matt_damon
    out = by_id(verify(table(corpus, own)))
    vectors = {photo.image_id: np.asarray(photo.faces[0]["embedding"]) for photo in own}
    total = sum(vectors.values())
    for image_id, vector in vectors.items():
        others = total - vector
        assert out[image_id]["sim_to_centroid"] == pytest.approx(vector @ others / np.linalg.norm(others), abs=1e-5)
        assert out[image_id]["sim_to_centroid"] < vector @ total / np.linalg.norm(total) - 0.01  # not in-sample


def test_copies_and_mirrored_copies_share_a_dup_group(corpus, verify, faces) -> None:
    copy = corpus.photo("copy-of-img4.jpg", reencoded(faces["images"] / "img4.jpg"))
    photos = labelled(corpus, "img4.jpg", "img11.jpg", "img11_reflection.jpg", "img2.jpg", "img6.jpg") + [copy]
    out = by_id(verify(table(corpus, photos)))
    original, mirror_a, mirror_b, other_a, other_b = photos[:5]
    assert (
        out[copy.image_id]["dup_group"] == out[original.image_id]["dup_group"] == min(copy.image_id, original.image_id)
    )
    assert out[mirror_a.image_id]["dup_group"] == out[mirror_b.image_id]["dup_group"]
    singles = {out[p.image_id]["dup_group"] for p in (original, mirror_a, other_a, other_b)}
    assert len(singles) == 4 and out[other_a.image_id]["dup_group"] == other_a.image_id


def test_min_images_counts_distinct_photos(corpus, verify, faces) -> None:
    """Two photos and a copy of one are three rows but two photos: not enough for reference + target pairs."""
    copy = corpus.photo("copy-of-img20.jpg", reencoded(faces["images"] / "img20.jpg"))
    rows = table(corpus, labelled(corpus, "img20.jpg", "img21.jpg") + [copy])  # jeff_bezos
    out = verify(rows)
    assert {(r["status"], r["reason"], r["identity_kept"]) for r in out} == {("dropped", "too_few_images", 0)}
    assert all("2 distinct photos" in r["detail"] for r in out)
    assert {(r["status"], r["identity_kept"]) for r in verify(rows, "verify.min_images=2")} == {("ok", 3)}


def test_two_equal_identities_in_one_folder_are_flagged_competing(corpus, verify) -> None:
    katy = labelled(corpus, "img26.jpg", "img27.jpg", "img28.jpg", "img42.jpg")
    scarlett = labelled(corpus, "img8.jpg", "img9.jpg", "img47.jpg", "img48.jpg")
    out = verify(table(corpus, katy + scarlett))
    assert {r["identity_competing"] for r in out} == {True}
    assert sum(r["status"] == "ok" for r in out) == 4  # one of them wins, deterministically
    scattered = labelled(
        corpus, "img26.jpg", "img27.jpg", "img28.jpg", "img42.jpg", "img8.jpg", "img13.jpg", "img29.jpg"
    )
    assert {r["identity_competing"] for r in verify(table(corpus, scattered))} == {False}


def test_new_thresholds_change_decisions_not_evidence(corpus, verify) -> None:
    """Re-thresholding needs only the stored rows: same similarities, different keep decisions."""
    rows = table(corpus, labelled(corpus, "img16.jpg", "img17.jpg", "img59.jpg", "img61.jpg", "img62.jpg", "img34.jpg"))
    default, strict = verify(rows), verify(rows, "verify.threshold=0.999")
    assert [r["sim_to_centroid"] for r in default] == [r["sim_to_centroid"] for r in strict]
    assert sum(r["status"] == "ok" for r in default) == 5
    assert {r["reason"] for r in strict} == {"not_target_identity"}


def test_the_stage_imports_no_image_or_face_model_library() -> None:
    """Its fingerprint reads the face backends' calibrations, which are declarations: no model library loads."""
    libraries = "{'PIL', 'cv2', 'dlib', 'onnxruntime', 'insightface', 'torch'}"
    probe = f"import sys, stages.verify; stages.verify.VerifyStage.constants(); print(sorted({libraries} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_runs_as_a_runner_task_over_the_ok_filter_rows(corpus, tmp_path) -> None:
    """Through the executor every Ray actor runs: parquet in and out, dropped filter rows left out, marker counts."""
    rows = table(corpus, labelled(corpus, "img34.jpg", "img35.jpg", "img36.jpg", "img37.jpg", "img38.jpg"), "leo")
    rejected = {"identity": "leo", "image_id": "f" * 64, "status": "dropped", "reason": "no_face"}
    run = RunDir(str(tmp_path / "run"))
    run.write_table(part_path("filter", "leo"), pa.concat_tables([rows, pa.Table.from_pylist([rejected], schema=ROWS)]))
    config = load_config(resolve_profile("cpu"))
    spec = {"task": "leo", "name": "leo", "input_digest": "d", "mode": RUN}
    result = TaskExecutor(VerifyStage, "filter", config, run.uri).execute(spec)
    assert result.error is None and (result.rows_in, result.rows_out) == (5, 5)
    assert (result.statuses, result.reasons) == ({"ok": 4, "dropped": 1}, {"not_target_identity": 1})
    assert read_markers(run, "verify")["leo"].kept == 4
    assert run.read_table(part_path("verify", "leo")).schema.field("dup_group").type == pa.string()


# ------------------------------------------------------------- quality on realistic crawled folders


@pytest.mark.slow
@pytest.mark.parametrize("identity", QUALITY_IDENTITIES)
def test_quality_on_a_realistic_crawled_folder(corpus, verify, identity) -> None:
    folder = build_folder(corpus, identity)
    assert len(folder.names) > folder.rows.num_rows  # faceless scenes were there, and the filter left them out
    out = verify(folder.rows)
    result = score(folder, pa.Table.from_pylist(out))
    assert result.wrong >= 0.3 * (result.wrong + result.photos)  # as dirty as the issue asks
    assert result.precision >= 0.98 and result.recall >= 0.90, result
    assert result.right_faces == result.group_photos, result
    groups = {row["image_id"]: row["dup_group"] for row in out}
    assert all(groups[copy] == groups[original] for copy, original in folder.copies.items())


# ------------------------------------------------------------- geometry and contracts (made-up vectors)


def fake_row(image_id: str, vectors: list[list[float]], phash: str | None = None, backend: str = "dlib") -> dict:
    """A filter-like row with given embeddings; no phash unless given (the stage must cope)."""
    faces = [{"box": [0, 0, 300, 300], "landmarks": [0.0] * 10, "score": 1.0, "embedding": v} for v in vectors]
    return {
        "identity": "someone",
        "image_id": image_id,
        "status": "ok",
        "faces": faces,
        "num_detected": len(faces),
        "phash": phash,
        "face_backend": backend,
        "face_models": "{}",
    }


def unit(*values: float) -> list[float]:
    vector = np.zeros(8)
    vector[: len(values)] = values
    return (vector / np.linalg.norm(vector)).tolist()


def spread(k: int) -> list[float]:
    """Unit vectors 0.96 alike pairwise (one person under dlib's defaults) but no near-duplicates."""
    return unit(1, *[0.2 if d == k else 0.0 for d in range(1, 4)])


def test_an_empty_task_gives_no_rows(tmp_path) -> None:
    out = VerifyStage(load_config(resolve_profile("cpu")), RunDir(str(tmp_path))).process(ROWS.empty_table())
    assert out.num_rows == 0 and set(VERIFICATION.names) <= set(out.schema.names)


def test_decisions_do_not_depend_on_row_order(corpus, verify) -> None:
    rows = build_folder(corpus, "jack_dorsey").rows
    expected = by_id(verify(rows))
    for seed in range(3):
        order = list(range(rows.num_rows))
        random.Random(seed).shuffle(order)
        shuffled = verify(rows.take(order))
        assert [r["image_id"] for r in shuffled] == rows.take(order)["image_id"].to_pylist()  # input order kept
        assert by_id(shuffled) == expected


def test_identical_phashes_group_images_whose_faces_differ(verify) -> None:
    rows = [
        fake_row("01", [unit(1, 0)], phash="ffff0000ffff0000"),
        fake_row("02", [unit(1, 0.1)], phash="ffff0000ffff0000"),
        fake_row("03", [unit(1, 0.2)], phash="ffff0000ffff03ff"),  # 10 bits away: the default still groups
        fake_row("04", [unit(1, 0.3)], phash="ffff0000ffff07ff"),  # 11 bits from 01, 1 bit from 03: chained
        fake_row("05", [unit(0, 1)], phash="0000ffff0000ffff"),
    ]
    out = verify(pa.Table.from_pylist(rows, schema=ROWS), "verify.dup_similarity=1.0", "verify.min_images=1")
    assert [r["dup_group"] for r in out] == ["01", "01", "01", "01", "05"]
    out = verify(
        pa.Table.from_pylist(rows, schema=ROWS),
        "verify.dup_similarity=1.0",
        "verify.dup_hamming=0",
        "verify.min_images=1",
    )
    assert [r["dup_group"] for r in out] == ["01", "01", "03", "04", "05"]


def test_rows_without_faces_are_dropped_not_lost(verify) -> None:
    rows = [fake_row(f"0{k}", [spread(k)]) for k in range(1, 4)] + [fake_row("09", [])]
    out = by_id(verify(pa.Table.from_pylist(rows, schema=ROWS)))
    assert (out["09"]["status"], out["09"]["reason"], out["09"]["target_face"]) == ("dropped", "no_face", None)
    assert [out[f"0{k}"]["status"] for k in range(1, 4)] == ["ok"] * 3


def test_an_unknown_backend_needs_explicit_thresholds(verify) -> None:
    rows = pa.Table.from_pylist([fake_row(f"0{k}", [spread(k)], backend="future") for k in range(1, 4)], schema=ROWS)
    with pytest.raises(ValueError, match="verify.threshold, verify.cluster_threshold, verify.dup_similarity"):
        verify(rows)
    explicit = ("verify.threshold=0.9", "verify.cluster_threshold=0.9", "verify.dup_similarity=0.99")
    assert {r["status"] for r in verify(rows, *explicit)} == {"ok"}


def test_one_identity_from_two_backends_is_an_error(verify) -> None:
    rows = [fake_row("01", [unit(1)]), fake_row("02", [unit(1)], backend="insightface")]
    with pytest.raises(ValueError, match="several backends"):
        verify(pa.Table.from_pylist(rows, schema=ROWS))


def test_thresholds_default_per_backend_and_are_overridable() -> None:
    config = load_config(resolve_profile("cpu"), ["verify.dup_similarity=0.97"])
    assert applied_calibration(config, "dlib") == Calibration(
        threshold=0.945, cluster_threshold=0.93, dup_similarity=0.97, min_face_score=0.0, copy_paste_max=0.979)
    assert applied_calibration(config, "insightface").threshold == 0.40
    with pytest.raises(UserError, match="verify.treshold"):
        load_config(resolve_profile("cpu"), ["verify.treshold=0.9"])


def test_verify_records_the_calibration_it_applied(verify) -> None:
    rows = [fake_row(f"0{k}", [spread(k)]) for k in range(1, 4)]
    out = verify(pa.Table.from_pylist(rows, schema=ROWS), "verify.quality.min_face_score=0.5")
    assert {tuple(sorted(row["calibration"].items())) for row in out} == {
        tuple(sorted({"threshold": 0.945, "cluster_threshold": 0.93, "dup_similarity": 0.99, "min_face_score": 0.5,
                      "copy_paste_max": 0.979}.items()))}


def test_a_new_verify_threshold_reruns_verify_but_not_filter() -> None:
    base, changed = (load_config(resolve_profile("cpu"), sets) for sets in ([], ["verify.threshold=0.95"]))
    assert base.fingerprint(VerifyStage.sections, 1) != changed.fingerprint(VerifyStage.sections, 1)
    assert base.fingerprint(FilterStage.sections, 1) == changed.fingerprint(FilterStage.sections, 1)


def test_a_changed_backend_calibration_reruns_verify(monkeypatch) -> None:
    """A backend's calibration decides verify's output, so it is part of its fingerprint."""
    config = load_config(resolve_profile("cpu"))
    before = VerifyStage.fingerprint(config)
    monkeypatch.setattr(DlibBackend, "calibration", replace(DlibBackend.calibration, threshold=0.9))
    assert VerifyStage.fingerprint(config) != before


DUMMY_BACKEND = """
from stages.backends import Backend
from stages.faces.base import FACES, Calibration, FaceBackend


@FACES.register
class DummyBackend(FaceBackend, Backend):
    name = "dummy"
    embedding_dim = 8
    calibration = {calibration}

    def _detect_one(self, image):
        return []

    def embed(self, images, faces):
        return [list(found) for found in faces]
"""


def add_backend(folder: Path, calibration: str, monkeypatch) -> None:
    """A new face backend in a package of its own: one file, registered as the project's own are."""
    FACES.names()  # the project's backends first; the registry is restored after the test
    monkeypatch.setattr(FACES, "_backends", dict(FACES._backends))
    path = folder / "dummy_face.py"
    path.write_text(DUMMY_BACKEND.format(calibration=calibration))
    spec = importlib.util.spec_from_file_location("dummy_face", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_a_new_face_backend_is_one_file_with_its_calibration(tmp_path, verify, monkeypatch) -> None:
    before = VerifyStage.fingerprint(load_config(resolve_profile("cpu")))
    add_backend(tmp_path, "Calibration(0.7, 0.6, 0.97, None, 0.9)", monkeypatch)
    config = load_config(resolve_profile("cpu"), ["face.backend=dummy"])
    VerifyStage.preflight(config)  # calibrated: no threshold needs setting
    assert VerifyStage.fingerprint(config) != before  # its calibration is part of verify's fingerprint
    rows = [fake_row(f"0{k}", [spread(k)], backend="dummy") for k in range(1, 4)]  # 0.96 alike: one person, 3 photos
    out = verify(pa.Table.from_pylist(rows, schema=ROWS), "face.backend=dummy")
    assert {row["status"] for row in out} == {"ok"}
    assert out[0]["calibration"] == {"threshold": 0.7, "cluster_threshold": 0.6, "dup_similarity": 0.97,
                                     "min_face_score": None, "copy_paste_max": 0.9}


def test_an_uncalibrated_backend_needs_its_thresholds_set(tmp_path, monkeypatch) -> None:
    add_backend(tmp_path, "None", monkeypatch)
    with pytest.raises(UserError, match="verify.threshold, verify.cluster_threshold, verify.dup_similarity"):
        VerifyStage.preflight(load_config(resolve_profile("cpu"), ["face.backend=dummy"]))
    VerifyStage.preflight(load_config(resolve_profile("cpu"), ["face.backend=dummy", "verify.threshold=0.5",
                                                               "verify.cluster_threshold=0.4",
                                                               "verify.dup_similarity=0.9"]))


def test_the_stage_contract() -> None:
    assert (VerifyStage.name, VerifyStage.sections) == ("verify", ("verify",))
    assert set(VerifyStage.requires) == {"faces", "phash", "face_backend"} and VerifyStage.produces == VERIFICATION
