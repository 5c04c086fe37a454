"""Diverse references (verify.max_images): farthest-point selection on real SFace embeddings and landmark poses of
the labelled photos, through the verify stage."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.fixtures.crawled_folders import ROWS, Corpus, reencoded
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.reasons import NOT_SELECTED_FOR_DIVERSITY
from pipeline.core.rundir import RunDir
from pipeline.report.diversity import identity_spread, section
from stages.diversity import distances, pose_spread, target_pose
from stages.faces import FACES
from stages.faces.quality import head_pose
from stages.verify import VerifyStage

IDENTITY = "angelina_jolie"  # 9 labelled photos


@pytest.fixture(scope="module")
def folder(faces) -> pa.Table:
    """The identity's photos plus a re-encoded copy of one, with the pose filter would store (from the landmarks)."""
    corpus = Corpus(FACES.get("sface").load(load_config(resolve_profile("cpu"), [])), faces["images"].parent)
    photos = [corpus.labelled(name) for name in faces["identities"][IDENTITY]]
    photos.append(corpus.photo("copy", reencoded(faces["images"] / faces["identities"][IDENTITY][0])))
    rows = []
    for photo in photos:
        row = corpus.row(IDENTITY, photo)
        for face in row["faces"]:
            face["yaw"], face["pitch"], face["roll"] = head_pose(np.array(face["landmarks"]))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=ROWS)


def verify(rows: pa.Table, tmp_path, *overrides: str) -> list[dict]:
    config = load_config(resolve_profile("cpu"), list(overrides))
    return VerifyStage(config, RunDir(str(tmp_path / "run"))).process(rows).to_pylist()


def evidence(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    poses = np.array([target_pose(r["faces"], r["target_face"]) for r in rows])
    return poses, np.array([r["faces"][r["target_face"]]["embedding"] for r in rows])


@pytest.mark.slow  # the photos' detection and embedding: ~10 s on a busy machine
def test_max_images_keeps_the_most_varied_photos_and_records_the_rest(folder, tmp_path) -> None:
    everything = verify(folder, tmp_path)
    candidates = [r for r in everything if r["status"] == "ok"]
    assert len(candidates) == folder.num_rows  # all ten pass verify without a limit

    limited = verify(folder, tmp_path, "verify.max_images=4")
    kept = [r for r in limited if r["status"] == "ok"]
    left = [r for r in limited if r["reason"] == NOT_SELECTED_FOR_DIVERSITY]
    assert len(kept) == 4 and len(left) == 6
    assert all(r["identity_kept"] == 4 for r in limited)
    assert all("kept 4 of 10" in r["detail"] for r in left)
    # the re-encoded copy and its original count as one photo: never both chosen while others are left
    assert len({r["dup_group"] for r in kept}) == 4
    # the most typical photo (closest to the centroid) anchors the selection
    assert max(candidates, key=lambda r: r["sim_to_centroid"])["image_id"] in {r["image_id"] for r in kept}

    # farthest-point cover: every left-out photo is closer to a kept one than the kept ones are to each other
    poses, embeddings = evidence(candidates)
    distance = distances(poses, embeddings)
    groups = np.array([r["dup_group"] for r in candidates])
    distance[groups[:, None] == groups[None, :]] = 0.0  # one photo however many copies
    index = {r["image_id"]: i for i, r in enumerate(candidates)}
    chosen = [index[r["image_id"]] for r in kept]
    separation = min(distance[a, b] for a, b in itertools.combinations(chosen, 2))
    assert all(distance[index[r["image_id"]], chosen].min() <= separation + 1e-9 for r in left)
    # and it spreads wider than the first four by image_id (what "keep the first N" would give)
    first = sorted(index)[:4]
    first_separation = min(distance[index[a], index[b]] for a, b in itertools.combinations(first, 2))
    assert separation > first_separation
    assert pose_spread(evidence(kept)[0]) > 0


def test_a_limit_above_the_photos_or_none_keeps_all(folder, tmp_path) -> None:
    for overrides in ((), ("verify.max_images=50",)):
        rows = verify(folder, tmp_path, *overrides)
        assert all(r["status"] == "ok" for r in rows)


@pytest.mark.slow  # the folder fixture above
def test_the_report_shows_the_pose_spread_before_and_after_selection(folder, tmp_path) -> None:
    rows = verify(folder, tmp_path, "verify.max_images=4")
    spread = identity_spread(rows)
    kept = [r for r in rows if r["status"] == "ok"]
    assert (spread.photos_before, spread.photos_after) == (10, 4)
    assert spread.degrees_before == pytest.approx(pose_spread(evidence(rows)[0]))
    assert spread.degrees_after == pytest.approx(pose_spread(evidence(kept)[0]))
    html = section({IDENTITY: spread}, {IDENTITY: "Angelina Jolie"})
    assert "Angelina Jolie" in html and "6 photos left out" in html and f"{spread.degrees_after:.1f}" in html


def test_a_limit_below_min_images_is_a_user_error() -> None:
    with pytest.raises(UserError, match="max_images"):
        load_config(resolve_profile("cpu"), ["verify.max_images=2", "verify.min_images=3"])
