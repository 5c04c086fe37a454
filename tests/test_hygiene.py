"""Checks across identities (the hygiene stage), on the labelled photos through the CLI on the cpu profile
(YuNet + SFace), and the centroid searches on synthetic data.

The photo tree: Angelina Jolie's photos split into two folders that share one photo (two names for one
person, one photo crawled for both), Katy Perry's and Scarlett Johansson's folders, each with the same
group photo of the two of them side by side (one photo, a different target face in each folder).
"""

from __future__ import annotations

from dataclasses import asdict
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, identity_slug
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE_EVIDENCE, NAMES, ROW_KEYS, VERIFICATION, extend
from stages.faces.sface_backend import SFaceBackend
from pipeline.core.markers import Marker, part_path, write_marker
from pipeline.engine.runner import TaskExecutor, content_digest, plan_stage
from pipeline.export import multiid
from stages.cross_identity import DECISION_SCHEMA, SAME_PERSON, close_pairs, merge_groups, shared_keys
from stages.hygiene import DECISIONS, HygieneStage
from stages.class_words import mentions
from stages.run_step import ByIdentity
from stages.segmenters import face_coverage
from stages.verify import VerifyStage
from benchmarks.fixtures.group_photos import side_by_side
from tests.conftest import FACES, ONE_ACTOR, cpu_run_args, run_cli, stage_rows

SHARED = "img6.jpg"  # in both Jolie folders
FOLDERS = {
    "jolie_a": ["img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg", SHARED],
    "jolie_b": [SHARED, "img7.jpg", "img10.jpg", "img11.jpg"],
    "katy_perry": ["img26.jpg", "img27.jpg", "img28.jpg", "img42.jpg", "img44.jpg", "img45.jpg", "img46.jpg"],
    "scarlett_johansson": ["img8.jpg", "img9.jpg", "img47.jpg", "img48.jpg", "img49.jpg", "img51.jpg"],
}
GROUP = "group.jpg"  # Katy Perry (img43) and Scarlett Johansson (img50) side by side, in both their folders
MERGE = "hygiene.merge=[[jolie_a, jolie_b]]"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hygiene")
    group = side_by_side(["img43.jpg", "img50.jpg"])
    for folder, photos in FOLDERS.items():
        (root / "photos" / folder).mkdir(parents=True)
        for photo in photos:
            shutil.copy(FACES / "images" / photo, root / "photos" / folder / photo)
    for folder in ("katy_perry", "scarlett_johansson"):
        (root / "photos" / folder / GROUP).write_bytes(group)
    (root / "names.txt").write_text("\n".join(FOLDERS) + "\n")
    return root


def run(tree: Path, *extra: str) -> str:
    args = cpu_run_args(tree / "names.txt", tree / "run", tree / "photos", "--set", "filter.min_short_side=256",
                        *ONE_ACTOR, *extra)
    result = run_cli("run", "--stage", "all", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def snapshot(out: Path) -> dict[str, int]:
    """Every file of the stages and shards with its modification time."""
    return {str(path): path.stat().st_mtime_ns for folder in ("stages", "shards") for path in (out / folder).rglob("*")}


def image_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hygiene_rows(out: Path, identity: str) -> list[dict]:
    return [row for row in stage_rows(out, "hygiene") if row["identity"] == identity]


@pytest.fixture(scope="module")
def first(tree: Path) -> Path:
    run(tree)
    return tree / "run"


@pytest.fixture(scope="module")
def again(tree: Path, first: Path) -> tuple[dict, dict, str]:
    before = snapshot(first)
    log = run(tree)
    return before, snapshot(first), log


@pytest.fixture(scope="module")
def merged(tree: Path, again) -> tuple[Path, dict]:
    before = snapshot(tree / "run")
    run(tree, "--set", MERGE)
    return tree / "run", before


@pytest.mark.slow
def test_the_same_photo_under_two_names_ends_in_one_identity(first: Path) -> None:
    """One person under two names: verify's identity choice keeps them under the better-supported name (five
    photos to four), so the photo both folders hold is kept once and hygiene has no copy left to claim."""
    copies = [row for row in stage_rows(first, "verify") if row["image_id"] == image_id(FACES / "images" / SHARED)]
    assert sorted(row["identity"] for row in copies) == ["jolie_a", "jolie_b"]
    assert [row["identity"] for row in copies if row["status"] == "ok"] == ["jolie_a"]
    given = next(row for row in copies if row["identity"] == "jolie_b")
    assert given["reason"] == "identity_is_other_name" and "jolie_a" in given["detail"]
    done = json.loads((first / "stages/hygiene/_run/done.json").read_text())
    # the one cross-identity near-duplicate left: the group photo (two faces, a different one kept under each)
    assert {key: done["counts"][key] for key in ("near_duplicates", "same_face", "claimed")} == {
        "near_duplicates": 1, "same_face": 0, "claimed": 0}


@pytest.mark.slow
def test_two_folders_of_one_person_keep_it_under_one_name(first: Path) -> None:
    verified = [row for row in stage_rows(first, "verify") if row["identity"] == "jolie_b"]
    assert not any(row["status"] == "ok" for row in verified)
    assert sum(row["reason"] == "identity_is_other_name" for row in verified) >= 3
    assert sum(row["status"] == "ok" for row in hygiene_rows(first, "jolie_a")) >= 4
    for identity in ("jolie_a", "katy_perry", "scarlett_johansson"):
        assert all(row["possible_same_person"] is None for row in hygiene_rows(first, identity))
    summary = json.loads((first / "report" / "summary.json").read_text())
    assert summary["hygiene"]["pairs"] == []
    verify = next(stage for stage in summary["stages"] if stage["stage"] == "verify")
    assert verify["reasons"]["identity_is_other_name"] >= 3


@pytest.mark.slow
def test_a_group_photo_with_two_faces_is_kept_under_both(first: Path, tree: Path) -> None:
    group = image_id(tree / "photos" / "katy_perry" / GROUP)
    rows = [row for row in stage_rows(first, "hygiene") if row["image_id"] == group]
    assert sorted(row["identity"] for row in rows) == ["katy_perry", "scarlett_johansson"]
    assert all(row["status"] == "ok" for row in rows)
    boxes = {row["identity"]: row["faces"][row["target_face"]]["box"] for row in rows}
    assert boxes["katy_perry"][2] <= boxes["scarlett_johansson"][0]  # Katy on the left, Scarlett on the right


@pytest.mark.slow
def test_every_face_of_the_group_photo_is_labelled_in_both_rows(first: Path, tree: Path) -> None:
    """The face labels (stages/face_labels.py): each row names both people, left to right, the target its own."""
    group = image_id(tree / "photos" / "katy_perry" / GROUP)
    rows = [row for row in stage_rows(first, "hygiene") if row["image_id"] == group]
    for row in rows:
        assert (row["identities"], row["num_identities"]) == (["katy_perry", "scarlett_johansson"], 2)
        assert row["faces"][row["target_face"]]["identity"] == row["identity"]
        assert all(face["identity_score"] >= 0.5 for face in row["faces"] if face["identity"])  # verify.threshold
    single = [row for row in stage_rows(first, "hygiene") if row["status"] == "ok" and len(row["faces"]) == 1]
    assert single and all(row["faces"][0]["identity"] == row["identity"] and row["num_identities"] == 1
                          for row in single)
    summary = json.loads((first / "report" / "summary.json").read_text())
    assert summary["multi_identity"] == {"samples": 1}  # one photo, kept under both: one sample
    html = (first / "report" / "index.html").read_text()
    section = html[html.index('<section id="group-photos"') :].split("</section>")[0]
    assert section.count("<img") == 1 and "katy_perry, scarlett_johansson" in section


@pytest.mark.slow
def test_the_multiid_export_holds_the_group_photo_once_with_both_people(first: Path, tree: Path, tmp_path) -> None:
    """export --format multiid (docs/multi-identity.md): the whole photo, both labelled faces with their masks, and
    each person's reference pool: their other kept photos' crops, never this photo."""
    dest = tmp_path / "multiid"
    result = run_cli("export", "--format", "multiid", "--out", str(first), "--dest", str(dest))
    assert result.returncode == 0, result.stderr[-3000:]
    (sample,) = [json.loads(line) for line in (dest / "train.jsonl").read_text().splitlines()]
    group = image_id(tree / "photos" / "katy_perry" / GROUP)
    assert (sample["image_id"], sample["name"]) == (group, ["katy_perry", "scarlett_johansson"])  # both faces named
    # each person's class word in the caption (the crop's, which shows both), by box: whose "woman" is whose
    people = sample["caption_people"]
    assert [(person["identity"], person["box"]) for person in people] == [("katy_perry", 0), ("scarlett_johansson", 1)]
    words = [[mention.start, mention.end] for mention in mentions(sample["caption"])]
    assert [person["class_word_span"] for person in people] == words and all(p["class_word_tokens"] for p in people)
    assert sample["class_word_span"] in [person["class_word_span"] for person in people]
    with Image.open(dest / sample["image_file"]) as photo:
        assert photo.size == (sample["width"], sample["height"]) and max(photo.size) <= 1024
    left, right = sample["bboxes"]
    assert left[2] <= sample["width"] / 2 <= right[0]  # Katy pasted on the left half, Scarlett on the right
    assert len(sample["landmarks"]) == len(sample["embeddings"]) == 2 and sample["caption_en"]
    for box, mask_file in zip(sample["bboxes"], sample["mask_files"], strict=True):
        with Image.open(dest / mask_file) as mask:
            pixels = np.asarray(mask.convert("1"), dtype=bool)
        w, h = box[2] - box[0], box[3] - box[1]
        assert face_coverage(pixels, [box[0] + w / 4, box[1] + h / 4, box[2] - w / 4, box[3] - h / 4]) > 0.9
    kept = [row for row in stage_rows(first, "caption") if row["status"] == "ok"]
    for who in sample["name"]:
        others = {row["image_id"] for row in kept if row["identity"] == who and row["image_id"] != group}
        assert {Path(path).stem for path in sample["references"][who]} == others
        assert all((dest / path).is_file() for path in sample["references"][who])
    refs = [json.loads(line) for path in dest.glob("*.refs.jsonl") for line in path.read_text().splitlines()]
    assert sample["phash"] and all(ref["phash"] for ref in refs)  # what leaves a resized copy out of the pools
    from pipeline.training import MultiIdentityDataset  # torch: imported by this test only

    dataset = MultiIdentityDataset(dest, num_refs=(1, 2), image_size=256, reference_size=64)
    item = dataset[0]
    assert len(dataset) == 1 and item["identities"] == ["katy_perry", "scarlett_johansson"]
    assert item["image"].shape[0] == 3 and max(item["image"].shape[1:]) == 256
    assert item["masks"].shape == (2, *item["image"].shape[1:]) and item["masks"].any(dim=(1, 2)).all()
    assert item["class_word_spans"] == [person["class_word_span"] for person in people]
    assert [tokens.tolist() for tokens in item["class_word_tokens"]] == [p["class_word_tokens"] for p in people]
    assert item["other_boxes"].shape == (0, 4)  # two faces, both labelled
    for who, files, stack in zip(item["identities"], item["reference_files"], item["references"], strict=True):
        assert 1 <= len(files) <= 2 and stack.shape == (len(files), 3, 64, 64)
        assert set(files) <= set(sample["references"][who])
    # a face no identity was given stays in the sample (MultiID-2M's every face), unnamed, with no mask or class word
    run = RunDir(str(first))
    row = next(row for shard in run.list_files("shards") if shard.startswith("train-")
               for row in multiid.read_rows(run, shard) if (row["image_id"], row["identity"]) == (group, "katy_perry"))
    for face in row["faces"]:
        if face["identity"] == "scarlett_johansson":
            face["identity"] = face["identity_score"] = None  # her mask stays in person_masks: unused
    row["caption_people"] = [person for person in row["caption_people"] if person["identity"] == "katy_perry"]
    alone = multiid.write_sample(run, RunDir(str(tmp_path / "alone")), "train-alone", row)
    assert (alone["name"], alone["identity_scores"][1], len(alone["bboxes"])) == (["katy_perry", None], None, 2)
    assert alone["mask_files"][0] and multiid.best_masks([alone]) == [alone["mask_files"][0], None]
    assert [(person["identity"], person["box"]) for person in alone["caption_people"]] == [("katy_perry", 0)]


@pytest.mark.slow
def test_a_rerun_does_nothing(again) -> None:
    before, after, log = again
    assert before == after
    assert "hygiene" in log and "+4 done" in log


@pytest.mark.slow
def test_merge_joins_two_identities(merged) -> None:
    out, before = merged
    assert all(row["reason"] == "merged_into_other_identity" and row["kept_under"] == "jolie_a"
               for row in hygiene_rows(out, "jolie_b"))
    joined = hygiene_rows(out, "jolie_a")
    moved = [row for row in joined if row["merged_from"] == "jolie_b"]
    assert len(moved) == len(FOLDERS["jolie_b"]) and all(row["identity"] == "jolie_a" for row in moved)
    shared = [row for row in joined if row["image_id"] == image_id(FACES / "images" / SHARED)]
    assert sorted(row["reason"] or "ok" for row in shared) == ["duplicate", "ok"]  # one photo, once
    assert all(row["possible_same_person"] is None for row in joined)
    index = pq.read_table(out / "shards" / "_index.parquet").to_pylist()
    assert "jolie_b" not in {entry["identity"] for entry in index}
    shard_rows = pq.read_table(out / "shards" / index[0]["shard"], columns=["identity", "merged_from"]).to_pylist()
    assert {"identity": "jolie_a", "merged_from": "jolie_b"} in shard_rows
    # the merge re-runs the later stages only for the two identities it changed
    for stage in ("safety_scores", "crop", "caption"):
        for identity in ("katy_perry", "scarlett_johansson"):
            marker = str(out / "stages" / stage / "_done" / f"{identity}.json")
            assert before[marker] == snapshot(out)[marker]


def test_pair_search_finds_exactly_the_planted_pairs() -> None:
    rng = np.random.default_rng(7)
    count, dim, block = 3000, 64, 512  # several blocks, the last one partial
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    planted = {(3, 4), (10, 2900), (511, 512), (1000, 1999), (2998, 2999)}  # in a block, across blocks, at edges
    for a, b in planted:
        vectors[b] = 0.9 * vectors[a] + 0.1 * vectors[b]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    centroids = vectors.astype(np.float16)
    i, j, sims = close_pairs(centroids, np.arange(count), 0.8, block)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == planted and (i < j).all()
    expected = np.einsum("nd,nd->n", centroids[i].astype(np.float32), centroids[j].astype(np.float32))
    assert np.allclose(sims, expected, atol=1e-5)
    rows = np.arange(0, count, 2)  # a subset of rows (identities with photos) keeps global indices
    i, j, _ = close_pairs(centroids, rows, 0.8, block)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == {(a, b) for a, b in planted if a % 2 == b % 2 == 0}


def test_shared_keys_pairs_the_identities_holding_one_photo() -> None:
    keys = np.array([5, 9, 5, 7, 9, 5, 9], dtype=np.uint64)
    owners = np.array([0, 0, 1, 1, 1, 2, 0], dtype=np.int32)  # key 9 twice in identity 0: once
    assert shared_keys(keys, owners) == {(0, 1), (0, 2), (1, 2)}


def test_merge_groups_resolve_names_and_refuse_mistakes() -> None:
    people = [Identity("ann", "Ann"), Identity("bob-1", "Bob"), Identity("cy", "cy")]
    assert merge_groups(people, [["Bob", "ann"]]) == [("bob-1", "ann"), ("cy",)]
    with pytest.raises(UserError, match="'Dee'"):
        merge_groups(people, [["ann", "Dee"]])
    with pytest.raises(UserError, match="twice"):
        merge_groups(people, [["ann", "Bob"], ["cy", "ann"]])


def test_merge_members_are_found_by_any_spelling_of_their_name() -> None:
    zoe, jolie = (Identity(identity_slug(name), name) for name in ("Zo\u00eb Test", "Angelina Jolie"))
    people = [zoe, jolie, Identity("cy", "cy")]
    assert merge_groups(people, [["ZOE\u0308 TEST", "angelina_jolie"]]) == [(zoe.slug, jolie.slug), ("cy",)]


def test_a_merge_naming_nobody_stops_before_any_work() -> None:
    """`run` and `decide --apply` check the run's identities before any task (pipeline/__main__.py)."""
    config = PipelineConfig.model_validate({"hygiene": {"merge": [["ann", "nobody"]]}})
    with pytest.raises(UserError, match="nobody"):
        HygieneStage.check_identities(config, [Identity("ann", "ann"), Identity("bob", "bob")])


def test_the_fingerprint_follows_the_hygiene_and_verify_sections() -> None:
    base = PipelineConfig()
    changed = [{"hygiene": {"merge": [["a", "b"]]}}, {"hygiene": {"same_person_similarity": 0.7}},
               {"verify": {"min_images": 4}}]
    for change in changed:
        assert HygieneStage.fingerprint(PipelineConfig.model_validate(change)) != HygieneStage.fingerprint(base)
    scheduling = PipelineConfig.model_validate({"hygiene": {"resources": {"num_cpus": 2}}})
    assert HygieneStage.fingerprint(scheduling) == HygieneStage.fingerprint(base)


CALIBRATION = asdict(SFaceBackend.calibration)  # what verify records in its rows


def verified_rows(identity: str, photos: list[tuple[str, np.ndarray]]) -> pa.Table:
    """Verify's kept rows for synthetic photos: (image_id, embedding) each, one face, its own dup group."""
    rows = [{"identity": identity, "name": identity, "image_id": image, "status": "ok", "phash": image[:16],
             "face_backend": "sface", "target_face": 0, "dup_group": image, "calibration": CALIBRATION,
             "faces": [{"box": [0, 0, 100, 100], "landmarks": [0.0] * 10, "score": 1.0,
                        "embedding": vector.tolist(), "embedding_norm": 1.0}]}
            for image, vector in photos]
    return pa.Table.from_pylist(rows, schema=extend(ROW_KEYS, NAMES, FACE_EVIDENCE, VERIFICATION))


def test_decisions_that_change_rerun_only_their_identities(tmp_path: Path) -> None:
    """A new identity holding a's photo changes a's decisions, not b's: only a's task is redone."""
    rng = np.random.default_rng(1)
    u, v = np.eye(16)[0], np.eye(16)[1]

    def near(axis: np.ndarray) -> np.ndarray:
        vector = axis + 0.05 * rng.standard_normal(16)
        return vector / np.linalg.norm(vector)

    photos = {"a": [(f"{k}a" * 32, near(u)) for k in range(3)], "b": [(f"{k}b" * 32, near(v)) for k in range(3)]}
    photos["c"] = [photos["a"][0], *((f"{k}c" * 32, near(u)) for k in range(1, 3))]
    run, config = RunDir(str(tmp_path / "run")), PipelineConfig()
    for slug, own in photos.items():
        table = verified_rows(slug, own)
        run.write_table(part_path("verify", slug), table)
        write_marker(run, Marker("verify", slug, "h", "i", content_digest(table), 3, 3, {"ok": 3}, {}))

    def plan(slugs: str) -> list[str]:
        todo = plan_stage(HygieneStage, VerifyStage, config, run, [Identity(s, s) for s in slugs]).todo
        executor = TaskExecutor(HygieneStage, "verify", config, run.uri)
        assert all(executor.execute(spec).error is None for spec in todo)
        return sorted(spec["task"] for spec in todo)

    assert plan("ab") == ["a", "b"]
    assert plan("ab") == []
    assert plan("abc") == ["a", "c"]
    a, c = (run.read_table(part_path("hygiene", slug)).to_pylist() for slug in "ac")
    assert a[0]["possible_same_person"] == ["c"] and c[0]["possible_same_person"] == ["a"]
    claimed = [row for row in a + c if row["image_id"] == photos["a"][0][0] and row["status"] != "ok"]
    assert len(claimed) == 1 and claimed[0]["reason"] == "claimed_by_other_identity"


def test_a_task_reads_its_own_decisions_across_row_groups(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path / "run"))
    slugs = ["a", "b", "b", "b", "c", "e"]
    decisions = pa.Table.from_pylist([{"identity": slug, "decision": SAME_PERSON, "other": str(k)}
                                      for k, slug in enumerate(slugs)], schema=DECISION_SCHEMA)
    with run.open_atomic(DECISIONS) as stream:
        pq.write_table(decisions, stream, row_group_size=2)  # b spans two row groups
    found = ByIdentity(run, DECISIONS)
    assert [row["other"] for row in found.of("b")] == ["1", "2", "3"]
    assert [row["other"] for row in found.of("e")] == ["5"]
    assert found.of("d") == [] and found.of("0") == [] and found.of("z") == []
