"""The run's identity choice across names: a co-star who out-numbers a name's own portraits stays the co-star's.

The cast crawl is assembled from the labelled photos (benchmarks/fixtures/group_photos.py): six "cast photos",
each Katy Perry beside someone not in the run, sit in every name's folder beside its own portraits. Faces are
real dlib detections and embeddings; the stage runs as the engine runs it (plan, whole-run step, task).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.fixtures.crawled_folders import ROWS, Corpus, Photo
from benchmarks.fixtures.group_photos import side_by_side
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.markers import Marker, part_path, write_marker
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.runner import TaskExecutor, content_digest, plan_stage
from stages.face_clusters import Candidate
from stages.filter import FilterStage
from stages.identity_choice import OTHER_NAME, PICK, Pool, choose
from stages.verify import VerifyStage
from stages.verify_run import refresh

CO_STAR = "katy_perry"
# Katy Perry beside one of five people who are not in the run (Leonardo DiCaprio, Elon Musk)
CAST = [("img43.jpg", "img34.jpg"), ("img45.jpg", "img35.jpg"), ("img46.jpg", "img36.jpg"),
        ("img26.jpg", "img37.jpg"), ("img27.jpg", "img18.jpg"), ("img42.jpg", "img19.jpg")]
PORTRAITS = {
    CO_STAR: ["img28.jpg", "img44.jpg"],  # and she is in every cast photo
    "mark_zuckerberg": ["img13.jpg", "img14.jpg", "img15.jpg", "img57.jpg", "img58.jpg"],
    "matt_damon": ["img29.jpg", "img30.jpg", "img31.jpg", "img32.jpg", "img33.jpg"],
    "george_clooney": ["img38.jpg", "img39.jpg"],  # fewer than verify.min_images of his own
}
CONFIG = load_config(resolve_profile("cpu"))


@pytest.fixture(scope="module")
def cast(corpus: Corpus) -> list[Photo]:
    photos = [corpus.photo(f"cast{k}.jpg", side_by_side(list(pair))) for k, pair in enumerate(CAST)]
    assert all(len(photo.faces) == 2 for photo in photos)  # both people found in every cast photo
    return photos


def folder(corpus: Corpus, cast: list[Photo], name: str) -> pa.Table:
    photos = [corpus.labelled(photo) for photo in PORTRAITS[name]] + cast
    return pa.Table.from_pylist([corpus.row(name, photo) for photo in photos], schema=ROWS)


def filtered_run(tmp_path, corpus: Corpus, cast: list[Photo]) -> RunDir:
    """A run whose filter stage is done: each name's folder as the face filter writes it."""
    run = RunDir(str(tmp_path / "run"))
    for name in PORTRAITS:
        rows = folder(corpus, cast, name)
        run.write_table(part_path("filter", name), rows)
        write_marker(run, Marker("filter", name, "h", "i", content_digest(rows), rows.num_rows, rows.num_rows,
                                 {"ok": rows.num_rows}))
    return run


def verified(run: RunDir) -> dict[str, list[dict]]:
    """Verify planned and run as the engine does: its whole-run step, then every task through the executor."""
    identities = [Identity(name, name) for name in PORTRAITS]
    plan = plan_stage(VerifyStage, FilterStage, CONFIG, run, identities)
    executor = TaskExecutor(VerifyStage, "filter", CONFIG, run.uri)
    assert all(executor.execute(spec).error is None for spec in plan.todo)
    return {name: run.read_table(part_path("verify", name)).to_pylist() for name in PORTRAITS}


def targets(corpus: Corpus, rows: list[dict]) -> set[str]:
    """The kept rows' photo names."""
    names = {corpus.labelled(n).image_id: n for photos in PORTRAITS.values() for n in photos}
    return {names.get(row["image_id"], "cast") for row in rows if row["status"] == "ok"}


@pytest.mark.slow
def test_alone_verify_keeps_the_co_star_under_a_name(corpus, cast, tmp_path) -> None:
    """The failure the choice fixes: in a folder of five portraits and six cast photos, the co-star dominates."""
    rows = VerifyStage(CONFIG, RunDir(str(tmp_path))).process(folder(corpus, cast, "mark_zuckerberg")).to_pylist()
    assert targets(corpus, rows) == {"cast"}


@pytest.mark.slow
def test_every_name_keeps_its_own_person(corpus, cast, tmp_path) -> None:
    out = verified(filtered_run(tmp_path, corpus, cast))
    for name in ("mark_zuckerberg", "matt_damon"):  # their next cluster: their own portraits, and only those
        assert targets(corpus, out[name]) == set(PORTRAITS[name])
        assert {row["reason"] for row in out[name] if row["status"] != "ok"} == {"not_target_identity"}
    assert sum(row["status"] == "ok" for row in out[CO_STAR]) == len(PORTRAITS[CO_STAR]) + len(CAST)
    given_away = [row for row in out["george_clooney"] if row["reason"] == "identity_is_other_name"]
    assert len(given_away) == len(CAST) and all(CO_STAR in row["detail"] for row in given_away)
    assert not any(row["status"] == "ok" for row in out["george_clooney"])


@pytest.mark.slow
def test_the_choice_is_made_once_and_rerun_only_where_it_changes(corpus, cast, tmp_path) -> None:
    run = filtered_run(tmp_path, corpus, cast)
    verified(run)
    identities = [Identity(name, name) for name in PORTRAITS]
    assert plan_stage(VerifyStage, FilterStage, CONFIG, run, identities).todo == []  # current: nothing to redo
    merged = load_config(resolve_profile("cpu"), ["hygiene.merge=[[katy_perry, george_clooney]]"])
    refresh("filter", merged, run, identities, force=False)  # one merge group: no longer rivals
    todo = plan_stage(VerifyStage, FilterStage, merged, run, identities).todo
    assert sorted(spec["task"] for spec in todo) == ["george_clooney"]


# ------------------------------------------------------------- the rule on made-up candidates


def candidate(images: int, solo: int, direction: int, dominant: bool = False, dim: int = 8) -> Candidate:
    centroid = np.zeros(dim, np.float32)
    centroid[direction] = 1.0
    return Candidate(images, solo, centroid, dominant)


def test_the_better_supported_name_keeps_the_person_and_the_other_repicks() -> None:
    pool = Pool()
    pool.add("a", 11, [candidate(6, 0, direction=0, dominant=True), candidate(5, 5, direction=1)])
    pool.add("k", 8, [candidate(8, 2, direction=0, dominant=True)])
    pool.add("c", 8, [candidate(6, 0, direction=0, dominant=True)])
    rows = {row["identity"]: row for row in choose(pool, {}, 0.5).to_pylist()}
    assert set(rows) == {"a", "c"}  # k keeps its own dominant person: no row
    assert rows["a"]["decision"] == PICK and rows["a"]["centroid"][1] == 1.0 and rows["a"]["other"] == "k"
    assert rows["c"]["decision"] == OTHER_NAME and rows["c"]["centroid"] is None and rows["c"]["other"] == "k"


def test_a_tie_goes_to_the_cluster_alone_in_more_photos() -> None:
    pool = Pool()
    pool.add("a", 10, [candidate(5, 0, direction=0, dominant=True), candidate(5, 5, direction=1)])
    rows = choose(pool, {}, 0.5).to_pylist()
    assert [(row["decision"], row["other"], row["centroid"][1]) for row in rows] == [(PICK, None, 1.0)]


def test_a_bystander_seen_only_in_group_photos_is_never_repicked() -> None:
    pool = Pool()
    pool.add("k", 5, [candidate(5, 5, direction=0, dominant=True)])
    pool.add("g", 8, [candidate(6, 0, direction=0, dominant=True), candidate(4, 0, direction=1)])
    assert [(row["identity"], row["decision"]) for row in choose(pool, {}, 0.5).to_pylist()] == [("g", OTHER_NAME)]


def test_names_of_one_merge_group_never_compete_and_others_never_meet() -> None:
    pool = Pool()
    pool.add("a", 5, [candidate(5, 5, direction=0, dominant=True)])
    pool.add("b", 4, [candidate(4, 4, direction=0, dominant=True)])
    pool.add("d", 4, [candidate(4, 4, direction=2, dominant=True)])
    assert choose(pool, {"a": 0, "b": 0}, 0.5).num_rows == 0
    assert choose(pool, {}, 0.5).to_pylist()[0]["identity"] == "b"  # a is better supported (5 photos)
    assert choose(Pool(), {}, 0.5).num_rows == 0
