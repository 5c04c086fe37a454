"""The stored pair index (shards/pairs/): the pairs the training sampler allows, with their difficulty, on the
shards of the shared run (tests/shared_run.py); hard pairs drawn from it; a rewrite keeps it consistent."""

from __future__ import annotations

import pickle
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.markers import Marker
from pipeline.core.names import Identity
from pipeline.core.pairs import hard_pair_weights, pair_difficulty
from pipeline.core.removals import Ledger, new_removal
from pipeline.core.rundir import RunDir
from pipeline.dataset.pair_index import PAIR_SCHEMA, PairRules, identity_pairs, pairs_file
from pipeline.dataset.shards import finish, plan_shards
from pipeline.dataset.takedown_shards import rewrite_shard
from pipeline.training import IdentityDataset
from tests.shared_run import ROW_GROUP_ROWS, SharedRun

Pair = tuple[str, str, str]  # identity, target image_id, reference image_id


@pytest.fixture(scope="module")
def shards(shared_run: SharedRun) -> Path:
    return shared_run.out / "shards"


@pytest.fixture(scope="module")
def stored(shards: Path) -> dict[Pair, dict]:
    """Every stored pair with its difficulty."""
    files = sorted((shards / "pairs").glob("train-*.parquet"))
    assert [path.name for path in files] == sorted(path.name for path in shards.glob("train-*.parquet"))
    table = pq.read_table(files)
    assert table.schema == PAIR_SCHEMA
    return {(row["identity"], row["image_id"], row["reference_id"]): row for row in table.to_pylist()}


def sampler_pairs(dataset: IdentityDataset) -> set[Pair]:
    """The (target, reference) pairs a dataset may draw from, by its own rules."""
    ids = dataset._image_ids.to_pylist()
    found = set()
    for target in dataset._targets:
        identity = dataset._spans[dataset._span_of[target]][2]
        found |= {(identity, ids[target], ids[reference]) for reference in dataset._candidates(int(target))}
    return found


@pytest.mark.slow  # reads the session's shared run, which takes a minute to build
def test_the_index_holds_the_pairs_the_sampler_allows_with_the_items_difficulty(shards: Path, stored: dict) -> None:
    for limit in (None, 0.75):  # the recorded calibration (sface: 0.835), and a stricter cut of the trainer's
        by_rules = sampler_pairs(IdentityDataset(shards, copy_paste_max=limit))
        from_index = sampler_pairs(IdentityDataset(shards, copy_paste_max=limit, pair_weights=hard_pair_weights))
        assert by_rules == from_index
    assert set(stored) == sampler_pairs(IdentityDataset(shards)) and len(stored) > 100  # none capped: <= 64 refs
    assert len(from_index) < len(stored)  # the stricter cut removed some
    table = pq.read_table(sorted(shards.glob("train-*")))
    rows = {(row["identity"], row["image_id"]): row for row in table.to_pylist()}
    for (identity, target, reference), pair in stored.items():
        found = pair_difficulty(rows[identity, target], rows[identity, reference])
        assert pair["similarity"] == pytest.approx(found.similarity, abs=1e-6)
        assert pair["pose_difference"] == pytest.approx(found.pose_difference, abs=1e-4)
        assert pair["same_scene"] == found.same_scene
    assert any(pair["same_scene"] for pair in stored.values()) and not all(p["same_scene"] for p in stored.values())


@pytest.mark.slow
def test_references_are_drawn_in_proportion_to_the_pair_weights(shards: Path, stored: dict) -> None:
    dataset = IdentityDataset(shards, num_refs=(1, 1), pair_weights=hard_pair_weights)
    ids = dataset._image_ids.to_pylist()
    drawn: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for seed in range(400):
        dataset.seed = seed
        for index in range(len(dataset)):
            target = int(dataset._targets[index])
            identity = dataset._spans[dataset._span_of[target]][2]
            drawn[identity, ids[target]].update(ids[row] for row in dataset.reference_rows(index))
    by_target = defaultdict(list)
    for pair in stored.values():
        by_target[pair["identity"], pair["image_id"]].append(pair)
    apart, harder = [], []
    for target, pairs in by_target.items():  # one reference: the first weighted pick, whatever its dup_group
        weights = hard_pair_weights(*(np.array([pair[key] for pair in pairs], dtype=float)
                                      for key in ("similarity", "pose_difference", "same_scene")))
        expected = weights / weights.sum()
        seen = np.array([drawn[target][pair["reference_id"]] for pair in pairs]) / 400
        apart.append(np.abs(seen - expected).sum() / 2)  # total variation distance
        harder.append(seen @ weights > weights.mean())  # the drawn pair is harder than a uniform draw's
    assert np.mean(apart) < 0.08 and np.mean(harder) > 0.9
    with pytest.raises(ValueError, match="above 0"):
        IdentityDataset(shards, pair_weights=lambda similarity, pose, scene: similarity - 0.7)
    flat = IdentityDataset(shards, pair_weights=lambda similarity, pose, scene: np.ones_like(similarity))
    assert pickle.loads(pickle.dumps(flat)).reference_rows(0) == flat.reference_rows(0)  # the lambda is not kept


@pytest.mark.slow
def test_a_rewritten_shard_drops_a_removed_photos_pairs_and_keeps_the_rest(shards: Path, tmp_path: Path) -> None:
    name = "train-00000-of-00004.parquet"  # angelina_jolie: the most photos
    run = RunDir(str(tmp_path))
    (tmp_path / "shards").mkdir()
    shutil.copy(shards / name, tmp_path / "shards" / name)
    table = pq.read_table(shards / name)
    identity = table["identity"][0].as_py()
    rules = PairRules(None, per_target=2)  # fewer than the rules allow: the cap's stable subset decides
    own = table.filter(pc.equal(table["identity"], identity))
    assert not identity_pairs(identity, own.drop_columns(["calibration"]), rules)  # no cut known: no pairs
    cut = identity_pairs(identity, own.drop_columns(["calibration"]), PairRules(0.75, 64))  # training.copy_paste_max
    assert cut and max(cut["similarity"].to_pylist()) <= 0.75
    before = pairs_of(identity_pairs(identity, own, rules))
    assert all(len(refs) <= 2 for refs in before.values()) and len(before) == own.num_rows
    gone = before[table["image_id"][0].as_py()][0]
    rewrite_shard(run, name, Ledger([new_removal("image", gone, "test", "tester", image_ids=(gone,))]),
                  ROW_GROUP_ROWS, rules)
    after = pq.read_table(tmp_path / "shards" / "pairs" / name)
    assert gone not in after["image_id"].to_pylist() + after["reference_id"].to_pylist()
    after = pairs_of(after.filter(pc.equal(after["identity"], identity)))
    kept = {target: refs for target, refs in before.items() if target != gone and gone not in refs}
    assert kept and {target: after[target] for target in kept} == kept  # the removal reshuffled no other pair
    assert all(len(after[target]) == 2 for target in before if target != gone)  # the next photo came in


def pairs_of(table) -> dict[str, list[str]]:
    found = defaultdict(list)
    for target, reference in zip(table["image_id"].to_pylist(), table["reference_id"].to_pylist(), strict=True):
        found[target].append(reference)
    return dict(found)


def test_the_shard_step_settings_decide_the_pair_index_and_its_fingerprint(tmp_path: Path) -> None:
    people, markers = [Identity("a", "A")], {"a": Marker("caption", "a", "h", "i", "d-a", 2, 2, {"ok": 2}, {})}
    plans = {key: plan_shards(PipelineConfig.model_validate(settings), people, markers) for key, settings in {
        "default": {}, "off": {"shard": {"pairs_per_target": 0}}, "cut": {"training": {"copy_paste_max": 0.7}}}.items()}
    assert plans["default"].pairs == PairRules(None, 64) and plans["off"].pairs is None
    assert plans["cut"].pairs == PairRules(0.7, 64)
    assert len({plan.fingerprint for plan in plans.values()}) == 3  # each changes what the shard step writes
    run = RunDir(str(tmp_path))
    for name in ("train-00000-of-00001.parquet", "train-00000-of-00002.parquet"):  # this plan's, an older plan's
        run.write_table(pairs_file(name), PAIR_SCHEMA.empty_table())
    finish(run, plans["default"], [], "card")
    assert sorted(path.name for path in (tmp_path / "shards" / "pairs").iterdir()) == ["train-00000-of-00001.parquet"]
    finish(run, plans["off"], [], "card")  # no pair index now: none stays behind
    assert not list((tmp_path / "shards" / "pairs").iterdir())
