"""The pair index: beside each shard, `shards/pairs/<shard file>` lists every (target, reference) pair of one
identity that the reference rules allow (pipeline/core/pairs.py, the rules the training sampler applies), with
the pair's difficulty, so a trainer can draw hard pairs without computing them (docs/data-format.md).

One file per shard, written by the writer of the shard (`ShardWriter`: the shard step and a takedown's rewrite),
so the two always hold the same rows: a photo removed from a shard leaves its pairs too. Per shard, not one file:
a shard's task writes it in parallel with the others, and a trainer streams it one shard at a time.

An identity's pairs grow as n^2: each target keeps at most `shard.pairs_per_target` references, a subset drawn by
a hash of the two image_ids, so the same pair is kept in every rewrite and a removed reference lets the next in
without reshuffling the rest. Rows lacking a face calibration (written before verify recorded one), where
`training.copy_paste_max` is unset, get no pairs: the copy-paste rule cannot be applied to them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.pairs import PairEvidence, allowed, similarities, too_similar
from pipeline.core.rundir import RunDir

PAIRS = "pairs"  # the folder under shards/
INPUTS = ["image_id", "dup_group", "faces", "target_face", "page_url", "phash", "calibration"]
BLOCK_ROWS = 512  # targets per block: an identity's n x n matrices are never held whole
PAIR_SCHEMA = pa.schema([
    pa.field("identity", pa.string()),
    pa.field("image_id", pa.string()),  # the target
    pa.field("reference_id", pa.string()),  # the reference: same identity, another dup_group, not too alike
    pa.field("similarity", pa.float32()),  # cosine of the two target faces
    pa.field("pose_difference", pa.float32()),  # degrees between the heads (yaw and pitch); null: unmeasured
    pa.field("same_scene", pa.bool_()),  # the same source page, or near-identical whole images (phash)
])


def pairs_file(shard: str) -> str:
    """The pair index of `shards/<shard>`, relative to the run."""
    return f"shards/{PAIRS}/{shard}"


@dataclass(frozen=True)
class PairRules:
    """What decides a shard's pairs besides its rows."""

    copy_paste_max: float | None  # training.copy_paste_max; None: each identity's recorded calibration
    per_target: int  # references kept per target at most

    @classmethod
    def of(cls, config: PipelineConfig) -> PairRules | None:
        """The config's rules; None where `shard.pairs_per_target` is 0 (no pair index)."""
        per_target = config.shard.pairs_per_target
        return cls(config.training.copy_paste_max, per_target) if per_target else None

    def limit(self, calibration: dict | None) -> float | None:
        return self.copy_paste_max if self.copy_paste_max is not None else (calibration or {}).get("copy_paste_max")


def identity_pairs(identity: str, table: pa.Table, rules: PairRules) -> pa.Table:
    """One identity's rows (in shard order) -> its allowed pairs with their difficulty, target by target."""
    rows = table.select([name for name in INPUTS if name in table.column_names]).to_pylist()
    limit = rules.limit(rows[0].get("calibration")) if rows else None
    if len(rows) < 2 or limit is None:
        return PAIR_SCHEMA.empty_table()
    evidence = PairEvidence.of_rows(rows)
    groups = np.array([row.get("dup_group") or row["image_id"] for row in rows], dtype=object)
    ids = np.array([row["image_id"] for row in rows], dtype=object)
    keys = id_keys(ids.tolist())
    pieces = []
    for start in range(0, len(rows), BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        ok = allowed(groups, too_similar(evidence.vectors, groups, limit, block), block)
        target, reference = np.nonzero(ok & first_by_key(pair_keys(keys[block], keys), ok, rules.per_target))
        found = (similarities(evidence.vectors, block), evidence.pose_difference(block), evidence.same_scene(block))
        similarity, pose, scene = (values[target, reference] for values in found)
        pieces.append(pa.table({
            "identity": pa.array([identity] * len(target), pa.string()),
            "image_id": pa.array(ids[start + target], pa.string()),
            "reference_id": pa.array(ids[reference], pa.string()),
            "similarity": pa.array(similarity, pa.float32()),
            "pose_difference": pa.array(pose, pa.float32(), mask=np.isnan(pose)),
            "same_scene": pa.array(scene, pa.bool_()),
        }, schema=PAIR_SCHEMA))
    return pa.concat_tables(pieces)


def id_keys(ids: list[str]) -> np.ndarray:
    """64 bits of a hash of each image_id."""
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "big") for i in ids],
                    dtype=np.uint64)


def pair_keys(targets: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(targets, references) uint64: a pseudo-random key per ordered pair (splitmix64's finaliser), stable."""
    with np.errstate(over="ignore"):
        mixed = targets[:, None] * np.uint64(0x9E3779B97F4A7C15) + references[None, :]
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))


def first_by_key(keys: np.ndarray, ok: np.ndarray, count: int) -> np.ndarray:
    """(targets, n) bool: per target, the `count` allowed references of lowest key (all of them where fewer)."""
    if ok.sum(axis=1).max(initial=0) <= count:
        return ok
    ranked = np.argsort(np.where(ok, keys, np.iinfo(np.uint64).max), axis=1, kind="stable")[:, :count]
    kept = np.zeros_like(ok)
    np.put_along_axis(kept, ranked, True, axis=1)
    return kept & ok


class PairIndexWriter:
    """A shard's pair index, identity by identity, as its `ShardWriter` adds them."""

    def __init__(self, stream: pa.NativeFile, rules: PairRules) -> None:
        self.rules = rules
        self.writer = pq.ParquetWriter(stream, PAIR_SCHEMA, compression="zstd")

    def add(self, identity: str, table: pa.Table) -> None:
        pairs = identity_pairs(identity, table, self.rules)
        if pairs.num_rows:
            self.writer.write_table(pairs)

    def close(self) -> None:
        self.writer.close()


@contextmanager
def pair_index(run: RunDir, shard: str, rules: PairRules | None) -> Iterator[PairIndexWriter | None]:
    """The pair index of `shards/<shard>`, written to a temporary name and renamed when complete; None without
    rules (`shard.pairs_per_target: 0`)."""
    if rules is None:
        yield None
        return
    with run.open_atomic(pairs_file(shard)) as stream:
        writer = PairIndexWriter(stream, rules)
        yield writer
        writer.close()

