"""Final shards: planning from markers, and the shared run's shards against its index (tests/shared_run.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.markers import Marker
from pipeline.dataset.shards import plan_shards
from tests.shared_run import KEPT, SharedRun


def markers(kept: dict[str, int], digest: str = "d") -> dict[str, Marker]:
    return {slug: Marker("verify", slug, "h", "i", f"{digest}-{slug}", n, n, {"ok": n}, {}) for slug, n in kept.items()}


def test_identities_stay_whole_and_shards_stay_under_the_limit() -> None:
    config = load_config(resolve_profile("cpu"), ["shard.max_rows=10"])
    people = [Identity(slug, slug) for slug in "abcdefg"]
    plan = plan_shards(config, people, markers({"a": 4, "b": 5, "c": 3, "d": 12, "e": 0, "f": 1, "g": 9}))
    assert plan.shards == [["a", "b"], ["c"], ["d"], ["f", "g"]]  # e kept nothing; d alone exceeds the limit
    assert plan.file(0) == "shards/train-00000-of-00004.parquet"


def test_the_plan_fingerprint_follows_inputs_and_shard_settings() -> None:
    config = load_config(resolve_profile("cpu"))
    people = [Identity("a", "a"), Identity("b", "b")]
    base = plan_shards(config, people, markers({"a": 2, "b": 3})).fingerprint
    assert plan_shards(config, people, markers({"a": 2, "b": 3})).fingerprint == base
    assert plan_shards(config, people, markers({"a": 2, "b": 3}, digest="new")).fingerprint != base
    smaller = load_config(resolve_profile("cpu"), ["shard.max_rows=3"])
    assert plan_shards(smaller, people, markers({"a": 2, "b": 3})).fingerprint != base
    busier = load_config(resolve_profile("cpu"), ["shard.resources.num_cpus=2"])  # scheduling: same shards
    assert plan_shards(busier, people, markers({"a": 2, "b": 3})).fingerprint == base


@pytest.mark.slow
def test_shards_hold_every_kept_row_once_as_the_index_says(shared_run: SharedRun, resharded: Path) -> None:
    out = shared_run.out
    index = pq.read_table(out / "shards" / "_index.parquet").to_pylist()
    assert {row["identity"] for row in index} == set(KEPT)
    seen = []
    for row in index:
        shard = pq.read_table(out / "shards" / row["shard"])
        rows = shard.slice(row["row_start"], row["num_rows"]).to_pylist()
        assert {r["identity"] for r in rows} == {row["identity"]}
        seen += [r["image_id"] for r in rows]
    assert len(seen) == len(set(seen))
    shard_files = sorted(path.name for path in (out / "shards").glob("train-*.parquet"))
    assert shard_files == sorted({row["shard"] for row in index}) and len(shard_files) > 1
    assert "status" not in pq.read_schema(out / "shards" / shard_files[0]).names
    assert "# Dataset card" in (out / "shards" / "README.md").read_text()

    # the same run with shard.max_rows=1000, only its shard step run again
    assert sorted(path.name for path in (resharded / "shards").glob("train-*.parquet")) == [
        "train-00000-of-00001.parquet"]
    assert pq.read_table(resharded / "shards" / "train-00000-of-00001.parquet").num_rows == len(seen)
