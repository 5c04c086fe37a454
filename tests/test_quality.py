"""Face quality: evidence measured once by the filter, gates decided by verify, and references that do not
teach copy-paste (the training sampler, the generator's choice, the report's pair counts).

The slow tests run the cpu profile's real face models (YuNet + SFace) on the labelled photos: a blurred
copy of a real photo, and a real profile. No labelled identity shows its own face strongly turned (their
|yaw| reaches 33 degrees), so the profile is a bystander cropped out of img59 (a man at its left edge,
checked by eye): his pose is real, his identity is not the folder's, and where verify must see a turned
target his measured pose stands in for one photo's. Warping a frontal photo would not turn a head.
"""

from __future__ import annotations

import io
import math
import random
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps

from pipeline.core.config import PipelineConfig, TrainingSection, load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.pairs import pair_counts, pose_weights
from pipeline.core.rundir import RunDir
from pipeline.core.schema import CALIBRATION, FACE, IMAGE_SIZE, NAMES, OK, PROVENANCE, extend
from pipeline.core.markers import Marker, part_path, read_markers, write_marker
from pipeline.engine.runner import RUN, TaskExecutor, content_digest, name_digest, plan_stage
from pipeline.generator.references import IdentityRows, Reference, sample_references
from pipeline.report import write_report
from pipeline.training import IdentityDataset
from stages.crawl import CrawlStage
from stages.faces import applied_calibration
from stages.faces.quality import EYE_TO_MOUTH, FRONTAL_NOSE, NOSE_DEPTH, TEMPLATE, head_pose
from stages.faces.sface_backend import SFaceBackend
from stages.filter import FilterStage
from stages.verify import VerifyStage
from benchmarks.fixtures.crawled_folders import ROWS

CLOONEY = "george_clooney"  # img38-41, one clear face each
BLURRED = "img38-blurred.jpg"  # img38 through a Gaussian blur of radius 3: its 316 px face's sharpness 110 -> ~11
PROFILE = "profile.jpg"  # img59's left 640 x 640: a real man in profile, facing the image's right
QUALITY_REASONS = {"extreme_pose", "blurry_face", "low_face_score", "small_face_share", "many_faces"}
FILTER_SETTINGS = ["filter.min_face_size=80", "filter.min_short_side=256"]  # below every labelled face and photo
FILTERED = extend(ROWS, IMAGE_SIZE, NAMES, PROVENANCE)  # the filter columns verify and the report read


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=95)  # PNG ignores the quality
    return buffer.getvalue()


def extra_photos(images: Path) -> dict[str, bytes]:
    """The blurred copy, the profile and its mirror image, and img38 turned in the image plane."""
    img38 = Image.open(images / "img38.jpg").convert("RGB")
    profile = Image.open(images / "img59.jpg").convert("RGB").crop((0, 0, 640, 640))
    return {
        BLURRED: encoded(img38.filter(ImageFilter.GaussianBlur(3))),
        PROFILE: encoded(profile),
        "profile-mirrored.jpg": encoded(ImageOps.mirror(profile)),
        "img38-turned-20.jpg": encoded(img38.rotate(20, resample=Image.Resampling.BICUBIC)),  # counter-clockwise
        "img38-turned-minus-20.jpg": encoded(img38.rotate(-20, resample=Image.Resampling.BICUBIC)),
    }


def clooney_photos(images: Path) -> dict[str, bytes]:
    """George Clooney's four labelled photos and the blurred copy of img38."""
    names = ["img38.jpg", "img39.jpg", "img40.jpg", "img41.jpg"]
    return {name: (images / name).read_bytes() for name in names} | {BLURRED: extra_photos(images)[BLURRED]}


def config(*overrides: str) -> PipelineConfig:
    return load_config(resolve_profile("cpu"), [*FILTER_SETTINGS, *overrides])


def crawl_rows(identity: str, blobs: dict[str, bytes], run: RunDir) -> pa.Table:
    """What crawl hands the filter: the bytes stored under raw/, one `ok` row per photo, in name order."""
    rows = []
    for name, data in sorted(blobs.items()):
        run.write_bytes(f"raw/{identity}/{name}", data)
        rows.append({"identity": identity, "name": identity, "image_id": name, "status": OK,
                     "raw_path": f"raw/{identity}/{name}"})
    return pa.Table.from_pylist(rows, schema=extend(NAMES, PROVENANCE))


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, faces) -> dict[str, dict]:
    """Filter rows (cpu profile, real models) of every labelled photo and the extra ones, by file name
    (image_id is the file name here, so rows read back by name)."""
    names = sorted({n for photos in faces["identities"].values() for n in photos} | set(faces["group_photos"]))
    blobs = {name: (faces["images"] / name).read_bytes() for name in names} | extra_photos(faces["images"])
    run = RunDir(str(tmp_path_factory.mktemp("quality")))
    stage = FilterStage(config(), run)
    stage.setup()
    return {row["image_id"]: row for row in stage.process(crawl_rows("x", blobs, run)).to_pylist()}


def target(row: dict) -> dict:
    """The photo's subject in these single-person photos: the detector's surest face (a turned copy of img38 also
    yields a larger false detection)."""
    return max(row["faces"], key=lambda face: face["score"])


def folder(filtered: dict, names: list[str], identity: str = CLOONEY) -> pa.Table:
    return pa.Table.from_pylist([{**filtered[name], "identity": identity} for name in names], schema=FILTERED)


def verify(rows: pa.Table, *overrides: str) -> dict[str, dict]:
    out = VerifyStage(config(*overrides), RunDir(tempfile.mkdtemp())).process(rows).to_pylist()
    return {row["image_id"]: row for row in out}


# ------------------------------------------------------------- head pose from five landmarks


def generic_face(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """The five landmarks of the generic face the estimate assumes, turned by known angles (degrees) and
    projected orthographically, in pixels (half interocular distance 50 px)."""
    eyes, mouth = TEMPLATE[:2].mean(axis=0), TEMPLATE[3:].mean(axis=0)
    half_eyes, half_mouth = (TEMPLATE[1, 0] - TEMPLATE[0, 0]) / 2, (TEMPLATE[4, 0] - TEMPLATE[3, 0]) / 2
    ratio = half_mouth / half_eyes
    points = np.array([[-1, 0, 0], [1, 0, 0], [0, FRONTAL_NOSE * EYE_TO_MOUTH, NOSE_DEPTH],
                       [-ratio, EYE_TO_MOUTH, 0], [ratio, EYE_TO_MOUTH, 0]], dtype=np.float64)
    assert (mouth - eyes)[1] / half_eyes == pytest.approx(EYE_TO_MOUTH)
    up, turn, tilt = (math.radians(a) for a in (pitch, yaw, roll))
    y = points[:, 1] * math.cos(up) - points[:, 2] * math.sin(up)  # chin up: the nose rises
    z = points[:, 1] * math.sin(up) + points[:, 2] * math.cos(up)
    x = points[:, 0] * math.cos(turn) + z * math.sin(turn)  # turned right: the nose moves right
    flat = np.stack([x, y], axis=1) @ np.array([[math.cos(tilt), math.sin(tilt)], [-math.sin(tilt), math.cos(tilt)]])
    return (flat * 50 + 300).astype(np.float32)


@pytest.mark.parametrize("roll", [-25.0, 0.0, 40.0])
@pytest.mark.parametrize(("yaw", "pitch"), [(0, 0), (30, 0), (-60, 0), (80, 0), (0, 25), (0, -40)])
def test_the_pose_of_a_generic_face_turned_about_one_axis_is_recovered(yaw: float, pitch: float, roll: float) -> None:
    assert head_pose(generic_face(yaw, pitch, roll)) == pytest.approx((yaw, pitch, roll), abs=0.01)


def test_a_face_turned_about_two_axes_is_recovered_roughly() -> None:
    for yaw, pitch in [(30, 20), (-45, -20), (20, -30)]:
        estimate = head_pose(generic_face(yaw, pitch, 10))
        assert estimate == pytest.approx((yaw, pitch, 10), abs=8)
        assert np.sign(estimate[:2]).tolist() == np.sign([yaw, pitch]).tolist()


def test_the_alignment_template_reads_frontal() -> None:
    yaw, pitch, roll = head_pose(TEMPLATE)
    assert (yaw, pitch) == pytest.approx((0, 0), abs=0.01) and abs(roll) < 0.5


@pytest.mark.slow
def test_a_real_profile_reads_strongly_turned_and_its_mirror_image_the_other_way(filtered) -> None:
    (profile,), (mirrored,) = filtered[PROFILE]["faces"], filtered["profile-mirrored.jpg"]["faces"]
    assert profile["yaw"] > 50 and mirrored["yaw"] < -50  # he faces the image's right; mirrored, its left
    assert abs(profile["yaw"] + mirrored["yaw"]) < 25  # five-point landmarks of a profile are rough guesses


@pytest.mark.slow
def test_turning_a_photo_in_the_image_plane_turns_its_roll(filtered) -> None:
    """Rotating the image is exactly a roll of the head; yaw and pitch (measured after undoing the roll) stay."""
    upright = target(filtered["img38.jpg"])
    for name, expected in [("img38-turned-20.jpg", -20), ("img38-turned-minus-20.jpg", 20)]:
        turned = target(filtered[name])
        assert turned["roll"] - upright["roll"] == pytest.approx(expected, abs=6)  # counter-clockwise is negative
        assert turned["yaw"] == pytest.approx(upright["yaw"], abs=12)


# ------------------------------------------------------------- evidence (filter) and gates (verify)


@pytest.mark.slow
def test_every_stored_face_carries_its_quality_evidence(filtered) -> None:
    row = filtered["couple.jpg"]
    assert len(row["faces"]) == 2
    for face in row["faces"]:
        x0, y0, x1, y1 = face["box"]
        assert face["image_share"] == pytest.approx((x1 - x0) * (y1 - y0) / (row["width"] * row["height"]), rel=1e-4)
        assert face["sharpness"] > 0 and all(abs(face[angle]) <= 90 for angle in ("yaw", "pitch", "roll"))


@pytest.mark.slow
def test_a_blurred_copy_drops_as_blurry_face_and_a_lower_threshold_keeps_it(filtered) -> None:
    rows = folder(filtered, ["img38.jpg", "img39.jpg", "img40.jpg", "img41.jpg", BLURRED])
    assert target(filtered[BLURRED])["sharpness"] < 25 <= target(filtered["img38.jpg"])["sharpness"] / 3
    out = verify(rows)
    assert (out[BLURRED]["status"], out[BLURRED]["reason"]) == ("dropped", "blurry_face")
    assert out[BLURRED]["detail"].startswith("sharpness ") and "< 25" in out[BLURRED]["detail"]
    assert {out[name]["status"] for name in out if name != BLURRED} == {"ok"}
    assert {row["identity_kept"] for row in out.values()} == {4}
    retuned = verify(rows, "verify.quality.min_sharpness=5")
    assert retuned[BLURRED]["status"] == "ok"
    assert [row["sim_to_centroid"] for row in retuned.values()] == [row["sim_to_centroid"] for row in out.values()]


@pytest.mark.slow
def test_a_strongly_turned_target_drops_as_extreme_pose(filtered) -> None:
    """img39's target face given the real profile's measured pose (no labelled identity turns its own face so far)."""
    pose = {angle: filtered[PROFILE]["faces"][0][angle] for angle in ("yaw", "pitch", "roll")}
    turned = {**filtered["img39.jpg"], "faces": [{**face, **pose} for face in filtered["img39.jpg"]["faces"]]}
    rows = folder({**filtered, "img39.jpg": turned}, ["img38.jpg", "img39.jpg", "img40.jpg", "img41.jpg"])
    out = verify(rows)
    assert (out["img39.jpg"]["status"], out["img39.jpg"]["reason"]) == ("dropped", "extreme_pose")
    assert out["img39.jpg"]["detail"].startswith(f"yaw {pose['yaw']:+.0f}")
    assert verify(rows, "verify.quality.max_yaw=90", "verify.quality.max_pitch=90")["img39.jpg"]["status"] == "ok"


@pytest.mark.slow
def test_the_default_gates_keep_every_labelled_photo(filtered, faces) -> None:
    """Every identity's folder of labelled photos (the group photos in Angelina Jolie's): no quality drop."""
    measured = Counter()
    for identity, photos in faces["identities"].items():
        names = photos + (list(faces["group_photos"]) if identity == "angelina_jolie" else [])
        out = verify(folder(filtered, names, identity))
        assert not {row["reason"] for row in out.values()} & QUALITY_REASONS, identity
        measured.update(row["status"] for row in out.values())
    assert measured["ok"] >= 56  # the 2-photo identities drop as too_few_images, nothing else


# ------------------------------------------------------------- gates on stored numbers (made-up evidence)


def gated_row(k: int, **evidence: float | None) -> dict:
    """A filter-like sface row: photo k of one person (faces 0.6 alike: one identity, no near-duplicates, under
    sface's defaults) with the given evidence, beside a small face of someone else."""
    vector, stranger = np.zeros(16), np.zeros(16)
    vector[0], vector[k], stranger[8 + k] = 1.0, 0.8, 1.0
    face = {"box": [0, 0, 300, 300], "landmarks": [0.0] * 10, "score": 0.95, "embedding": vector.tolist(),
            "sharpness": 100.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "image_share": 0.2}
    small = {**face, "box": [400, 0, 500, 100], "embedding": stranger.tolist()}
    return {"identity": "someone", "image_id": f"0{k}", "status": OK, "faces": [{**face, **evidence}, small],
            "num_detected": 2, "phash": None, "face_backend": "sface", "face_models": "{}"}


def test_each_gate_drops_with_its_reason_and_the_detail_lists_every_failure() -> None:
    rows = [gated_row(k) for k in range(1, 5)] + [
        gated_row(5, sharpness=3.0, yaw=-70.0), gated_row(6, score=0.5), gated_row(7, image_share=0.001, pitch=10.0)
    ]
    out = verify(pa.Table.from_pylist(rows, schema=ROWS))
    assert (out["05"]["reason"], out["05"]["detail"]) == (
        "extreme_pose", "yaw -70, pitch +0 degrees (limits 45, 45); sharpness 3.0 < 25")
    assert (out["06"]["reason"], out["06"]["detail"]) == ("low_face_score", "detector score 0.500 < 0.8")
    assert (out["07"]["reason"], out["07"]["detail"]) == ("small_face_share", "face share of the image 0.0010 < 0.01")
    assert {out[f"0{k}"]["status"] for k in range(1, 5)} == {"ok"} and out["01"]["identity_kept"] == 4
    assert {row["large_faces"] for row in out.values()} == {1}  # the 100 px face is a third of the target's side
    many = verify(pa.Table.from_pylist(rows, schema=ROWS), "verify.quality.max_large_faces=1",
                  "verify.quality.min_face_score=0.4")
    assert many["06"]["status"] == "ok"
    close = [{**row, "faces": [row["faces"][0], {**row["faces"][1], "box": [400, 0, 560, 160]}]} for row in rows]
    crowded = verify(pa.Table.from_pylist(close, schema=ROWS), "verify.quality.max_large_faces=1")
    assert (crowded["01"]["reason"], crowded["01"]["detail"]) == ("many_faces", "2 large faces > 1")


def test_gated_photos_do_not_count_towards_min_images() -> None:
    rows = [gated_row(1), gated_row(2), gated_row(3, sharpness=1.0)]
    out = verify(pa.Table.from_pylist(rows, schema=ROWS))
    assert [out[k]["reason"] for k in ("01", "02", "03")] == ["too_few_images", "too_few_images", "blurry_face"]
    assert {row["identity_kept"] for row in out.values()} == {0}


def test_faces_without_evidence_are_not_gated() -> None:
    """Rows made before filter measured quality (or by hand) carry nulls: nothing to decide from."""
    bare = {"sharpness": None, "yaw": None, "pitch": None, "roll": None, "image_share": None}
    rows = [gated_row(k, **bare) for k in range(1, 4)]
    assert {row["status"] for row in verify(pa.Table.from_pylist(rows, schema=ROWS)).values()} == {"ok"}


def test_gate_thresholds_change_verify_only_and_score_defaults_follow_the_backend() -> None:
    base, tuned = config(), config("verify.quality.min_sharpness=5")
    assert FilterStage.fingerprint(base) == FilterStage.fingerprint(tuned)
    assert VerifyStage.fingerprint(base) != VerifyStage.fingerprint(tuned)
    scores = [applied_calibration(base, backend).min_face_score for backend in ("sface", "dlib", "insightface")]
    assert scores == [0.8, 0.0, 0.5]
    assert applied_calibration(config("verify.quality.min_face_score=0.3"), "sface").min_face_score == 0.3


@pytest.mark.slow
def test_a_retuned_gate_reruns_verify_through_the_runner_and_never_a_detector(faces, tmp_path, monkeypatch) -> None:
    """Filter runs once; with a new sharpness threshold the planner re-runs verify only, and verify runs with
    the face backend and the sharpness measure broken."""
    run, identity = RunDir(str(tmp_path / "run")), Identity(CLOONEY, CLOONEY)
    blobs = clooney_photos(faces["images"])
    crawled = crawl_rows(CLOONEY, blobs, run)
    run.write_table(part_path("crawl", CLOONEY), crawled)
    write_marker(run, Marker("crawl", CLOONEY, CrawlStage.fingerprint(config()), name_digest(CLOONEY),
                             content_digest(crawled), 1, crawled.num_rows, {OK: crawled.num_rows}))

    def execute(stage: type, upstream: str, settings: PipelineConfig) -> None:
        digest = read_markers(run, upstream)[CLOONEY].output_digest
        spec = {"task": CLOONEY, "name": CLOONEY, "input_digest": digest, "mode": RUN}
        assert TaskExecutor(stage, upstream, settings, run.uri).execute(spec).error is None

    execute(FilterStage, "crawl", config())
    execute(VerifyStage, "filter", config())
    reasons = {row["image_id"]: row["reason"] for row in run.read_table(part_path("verify", CLOONEY)).to_pylist()}
    assert reasons == {**dict.fromkeys(blobs), BLURRED: "blurry_face"}

    tuned = config("verify.quality.min_sharpness=5")
    assert plan_stage(FilterStage, CrawlStage, tuned, run, [identity]).todo == []
    assert [spec["task"] for spec in plan_stage(VerifyStage, FilterStage, tuned, run, [identity]).todo] == [CLOONEY]

    def broken(*args, **kwargs):
        raise AssertionError("a re-tuned gate ran a face model")

    for method in ("detect", "embed", "analyze"):
        monkeypatch.setattr(SFaceBackend, method, broken)
    monkeypatch.setattr("stages.filter.sharpness", broken)
    execute(VerifyStage, "filter", tuned)
    assert [row["status"] for row in run.read_table(part_path("verify", CLOONEY)).to_pylist()] == [OK] * 5


# ------------------------------------------------------------- the report


def save_run_info(run: RunDir, settings: PipelineConfig, identities: list[str]) -> None:
    """config.yaml and run.json as `python -m pipeline run` writes them (the report reads both)."""
    from pipeline.engine.registry import STAGES

    run.write_bytes("config.yaml", settings.to_yaml().encode())
    run.write_json("run.json", {"profile": "cpu", "stage_hashes": {s.name: s.fingerprint(settings) for s in STAGES},
                                "identities": [[slug, slug] for slug in identities]})


@pytest.mark.slow
def test_the_report_shows_each_gate_and_the_pairs_also_for_runs_without_the_evidence(filtered, faces, tmp_path):
    run, settings = RunDir(str(tmp_path / "run")), config()
    blobs = clooney_photos(faces["images"])
    crawl_rows("x", blobs, run)  # the photos the report's tiles show, where the rows say they are
    rows = folder(filtered, sorted(blobs))
    verified = VerifyStage(settings, run).process(rows)
    save_run_info(run, settings, [CLOONEY])
    hashes = run.read_json("run.json")["stage_hashes"]
    # a marker counts when it chains: crawl consumed the name, each stage the output of the one before
    for stage, table, consumed, made in (("crawl", rows, name_digest(CLOONEY), "c"), ("filter", rows, "c", "f"),
                                         ("verify", verified, "f", "v")):
        run.write_table(part_path(stage, CLOONEY), table)
        write_marker(run, Marker(stage, CLOONEY, hashes[stage], consumed, made, table.num_rows, table.num_rows,
                                 {OK: table.num_rows}))

    summary = write_report(run)
    sharpness = summary["distributions"]["sharpness"]
    assert sharpness["dropped: blurry_face"]["count"] == 1 and sharpness["kept"]["count"] == 4
    assert sharpness["dropped: blurry_face"]["max"] < math.log10(25) <= sharpness["kept"]["min"]
    assert summary["training_pairs"][CLOONEY]["groups"] >= 3
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert '<section id="pairs">' in page and "sharpness.png" in page and "yaw.png" in page

    old = verified.to_pylist()
    evidence = {"sharpness", "yaw", "pitch", "roll", "image_share"}
    for row in old:
        row["faces"] = [{k: v for k, v in face.items() if k not in evidence} for face in row["faces"]]
    old_face = pa.struct([field for field in FACE if field.name not in evidence])
    schema = pa.schema([pa.field(f.name, pa.list_(old_face)) if f.name == "faces" else f for f in verified.schema
                        if f.name != "large_faces"])
    run.write_table(part_path("verify", CLOONEY), pa.Table.from_pylist(old, schema=schema))
    summary = write_report(run)
    assert "sharpness" not in {name for name, hist in summary["distributions"].items() if hist}
    assert summary["training_pairs"][CLOONEY]["groups"] >= 3
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "Face sharpness: no data: needs verify, and it measured nothing" in page


# ------------------------------------------------------------- references (training sampler, generator, report)


SHARD = "train-00000-of-00001.parquet"
PIXEL = encoded(Image.new("RGB", (8, 8), (120, 90, 60)))
MASK = encoded(Image.new("1", (8, 8), 1), "PNG")
SHARD_SCHEMA = pa.schema([
    pa.field("identity", pa.string()), pa.field("image_id", pa.string()), pa.field("dup_group", pa.string()),
    pa.field("faces", pa.list_(FACE)), pa.field("target_face", pa.int32()), pa.field("face_backend", pa.string()),
    pa.field("crop_image", pa.binary()), pa.field("mask", pa.binary()), pa.field("caption", pa.string()),
    pa.field("class_word", pa.string()), pa.field("class_word_tokens", pa.list_(pa.int32())),
    pa.field("calibration", CALIBRATION),
])

Photo = tuple[int | None, list[int], float | None]  # duplicate group (None: its own), embedding, yaw


def write_shards(root: Path, identities: list[list[Photo]]) -> list[dict]:
    """One shard of synthetic rows (what the sampler reads) and its index; returns the rows."""
    rows, index = [], []
    for number, photos in enumerate(identities):
        identity = f"id{number}"
        index.append({"identity": identity, "shard": SHARD, "row_start": len(rows), "num_rows": len(photos)})
        for k, (group, vector, yaw) in enumerate(photos):
            face = {"box": [0, 0, 100, 100], "embedding": [float(v) for v in vector], "yaw": yaw}
            rows.append({"identity": identity, "image_id": f"{identity}-{k}", "crop_image": PIXEL, "mask": MASK,
                         "dup_group": None if group is None else f"{identity}-g{group}", "faces": [face],
                         "target_face": 0, "face_backend": "sface", "caption": "a photo of a man",
                         "class_word": "man", "class_word_tokens": [5],
                         "calibration": asdict(SFaceBackend.calibration)})
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), root / SHARD)
    pq.write_table(pa.Table.from_pylist(index), root / "_index.parquet")
    return rows


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


vectors = st.lists(st.integers(-2, 2), min_size=3, max_size=3).filter(any)
photos = st.tuples(st.one_of(st.none(), st.integers(0, 3)), vectors, st.one_of(st.none(), st.floats(-80, 80)))


@settings(max_examples=60, deadline=None)
@given(
    identities=st.lists(st.lists(photos, min_size=1, max_size=7), min_size=1, max_size=3),
    limit=st.sampled_from([-0.5, 0.0, 0.5, 0.8, 0.95, 1.0]),
    low=st.integers(1, 3), extra=st.integers(0, 2), seed=st.integers(0, 10**6),
)
def test_the_sampler_never_serves_the_target_its_copies_or_a_too_alike_face(identities, limit, low, extra, seed):
    with tempfile.TemporaryDirectory() as folder_:
        rows = write_shards(Path(folder_), identities)
        dataset = IdentityDataset(folder_, num_refs=(low, low + extra), seed=seed, copy_paste_max=limit)
        by_id = {row["image_id"]: row for row in rows}
        group = {row["image_id"]: row["dup_group"] or row["image_id"] for row in rows}
        vector = {row["image_id"]: row["faces"][0]["embedding"] for row in rows}

        def allowed(target: str) -> set[str]:
            return {group[other] for other in by_id if by_id[other]["identity"] == by_id[target]["identity"]
                    and group[other] != group[target] and cosine(vector[target], vector[other]) <= limit - 1e-6}

        served = []
        for index in range(len(dataset)):
            item = dataset[index]
            target, references = item["image_id"], item["reference_ids"]
            served.append(target)
            assert target not in references and low <= len(references) <= low + extra
            assert len({group[ref] for ref in references}) == len(references)  # one photo per group
            for ref in references:
                assert by_id[ref]["identity"] == by_id[target]["identity"] and group[ref] != group[target]
                assert cosine(vector[target], vector[ref]) <= limit + 1e-6
        # every target the rules can serve is served (borderline cosines aside), and only those
        assert {t for t in by_id if len(allowed(t)) >= low} <= set(served)
        assert dataset.skipped_rows == len(rows) - len(served)


def test_references_whose_pose_differs_from_the_target_are_drawn_more_often(tmp_path) -> None:
    """Target at yaw 0; one photo at yaw 0, one at 60: weights 1 and 1 + 60/15 = 5, so the turned one ~5/6."""
    write_shards(tmp_path, [[(0, [1, 0, 0], 0.0), (1, [0, 1, 0], 0.0), (2, [0, 0, 1], 60.0)]])
    dataset = IdentityDataset(tmp_path, num_refs=(1, 1), copy_paste_max=0.9)
    picks = Counter()
    for seed in range(300):
        dataset.seed = seed
        picks.update(dataset.reference_rows(0))
    assert set(picks) == {1, 2} and 0.75 < picks[2] / 300 < 0.9
    assert pose_weights(np.array([0.0, 60.0, np.nan]), 0.0).tolist() == [1.0, 5.0, 1.0]


def test_the_default_copy_paste_limit_follows_the_face_backend(tmp_path) -> None:
    """Two photos 0.9 alike (sface: above its 0.835) and a third apart: the alike pair never pairs up."""
    alike = [1.0, 0.48, 0.0]  # cosine to [1, 0, 0]: 0.90
    write_shards(tmp_path, [[(0, [1, 0, 0], None), (1, alike, None), (2, [0, 0, 1], None)]])
    dataset = IdentityDataset(tmp_path, num_refs=(1, 2))
    for index in range(len(dataset)):
        item = dataset[index]
        assert all({item["image_id"], ref} != {"id0-0", "id0-1"} for ref in item["reference_ids"])
    assert TrainingSection().resolved(SFaceBackend.calibration.copy_paste_max) == 0.835 < cosine([1, 0, 0], alike)
    assert len(IdentityDataset(tmp_path, num_refs=(2, 2))) == 1  # only the third photo has two references left


def test_pair_counts_follow_the_rules() -> None:
    vectors = np.array([[1, 0, 0], [1, 0, 0], [0.99, 0.14, 0], [0, 1, 0]], dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    counts = pair_counts(vectors, np.array(["a", "a", "b", "c"]), copy_paste_max=0.9)
    # a-a: same group; a-b: too alike (4 ordered pairs refused); every photo pairs with c, and c with a, a, b
    assert (counts.photos, counts.groups, counts.pairs, counts.blocked, counts.servable) == (4, 3, 6, 4, 4)
    assert pair_counts(vectors, np.array(["a", "a", "b", "c"]), 0.9, min_refs=2).servable == 1


def reference(image_id: str, group: str, vector: list[float], yaw: float | None = None) -> Reference:
    unit = np.asarray(vector, dtype=np.float32) / np.linalg.norm(vector)
    return Reference("a", image_id, group, b"", unit, None, yaw)


def test_the_generator_picks_references_apart_from_each_other_and_in_other_poses() -> None:
    refs = [reference("1", "g1", [1, 0, 0]), reference("2", "g2", [1, 0.1, 0]), reference("3", "g3", [0, 1, 0]),
            reference("4", "g3", [0, 1, 0])]
    rows = IdentityRows("a", "man", "sface", refs)
    for seed in range(20):
        picked = sample_references(rows, 2, random.Random(seed), copy_paste_max=0.9)
        assert {r.dup_group for r in picked} in ({"g1", "g3"}, {"g2", "g3"})  # 1 and 2 are 0.995 alike
        assert len(sample_references(rows, 4, random.Random(seed), copy_paste_max=0.9)) == 4  # the rest fill up
    frontal = [reference("f", "f", [1, 0, 0], 0.0), reference("g", "g", [0, 1, 0], 0.0)]
    posed = IdentityRows("a", "man", "sface", [*frontal, reference("h", "h", [0, 0, 1], 60.0)])
    seconds = Counter()
    for seed in range(300):
        first, second = sample_references(posed, 2, random.Random(seed), copy_paste_max=0.9)
        if first.image_id == "f":
            seconds[second.image_id] += 1
    assert seconds["h"] > 2 * seconds["g"]  # after a frontal photo, the turned one is 5x as likely as another frontal
