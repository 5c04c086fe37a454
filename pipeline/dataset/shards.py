"""The final dataset: Parquet shards of the last stage's `ok` rows, each identity whole in one shard.

Shards are planned from the done-markers alone (in names-list order, each identity sized by the photos
filter kept, which a curator's decisions and new thresholds do not change: they never move an identity to
another shard), so planning reads no data; each shard is then written by a Ray task, streamed one identity at a time
into row groups, to a temporary name, with its pair index beside it (`pairs/<shard>`, pair_index.py).
`_index.parquet` (identity -> shard, first row, rows) is written after every shard, then shards (and pair
indexes) of an older plan are removed: a reader that follows the index never sees a half-written or stale shard.
A plan whose inputs are unchanged is not redone.

The opt-out list (`governance.optout`) is applied again here, as it reads now: rows it covers are
left out and counted (`opted_out` in the results and the card), and a changed list changes the
plan's fingerprint, so shards are rewritten without it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.optout import OptOutList
from pipeline.core.removals import load_ledger
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.core.markers import Marker, part_path
from pipeline.dataset.blur import blur_table
from pipeline.dataset.face_optout import FaceRefusals
from pipeline.dataset.pair_index import PAIRS, PairIndexWriter, PairRules, pair_index
from pipeline.engine.stats import StageCounts

SHARDS = "shards"
INDEX = f"{SHARDS}/_index.parquet"
DONE = f"{SHARDS}/_done.json"
ROW_STATUS = ["status", "reason", "detail"]  # every shard row is `ok`: these say nothing there
PROVENANCE_COUNTS = ("source", "license")
VERSION = 2  # raised when a shard's content changes for the same inputs and settings (2: the pair index)


@dataclass(frozen=True)
class ShardPlan:
    """Which identities go in which shard, and the fingerprint of everything that decides it."""

    shards: list[list[str]]
    fingerprint: str
    optout: OptOutList = field(default_factory=OptOutList)
    pairs: PairRules | None = None  # the pair index's rules; None: no pair index

    def file(self, index: int) -> str:
        return f"{SHARDS}/train-{index:05d}-of-{len(self.shards):05d}.parquet"


def plan_shards(config: PipelineConfig, identities: list[Identity], markers: dict[str, Marker],
                sizes: dict[str, int] | None = None) -> ShardPlan:
    """Greedy packing in names-list order: a shard closes before the identity that would overflow it. `sizes`: an
    identity's size for packing, default its kept rows; one a curator's decisions never change (write.py:
    packing_sizes), so a shard holds more than max_rows rows by the photos a split or a merge moved in, rather
    than move every identity after it to another shard."""
    shards: list[list[str]] = []
    rows_in_last = 0
    digests = []
    for identity in identities:
        marker = markers.get(identity.slug)
        if marker is None or not marker.kept:
            continue
        size = (sizes or {}).get(identity.slug, marker.kept)
        if not shards or rows_in_last + size > config.shard.max_rows:
            shards.append([])
            rows_in_last = 0
        shards[-1].append(identity.slug)
        rows_in_last += size
        digests.append((identity.slug, marker.output_digest))
    optout = OptOutList.read(config.governance.optout, config.governance.optout_phash_bits)
    # the stages' fingerprint: the shard settings less scheduling (the training rules: the pair index), and what
    # the shards are made of
    fingerprint = config.fingerprint(("shard", "training"), VERSION, {"inputs": digests, "optout": optout.digest})
    return ShardPlan(shards, fingerprint, optout, PairRules.of(config))


def is_current(run: RunDir, plan: ShardPlan) -> bool:
    return (run.read_state(DONE) or {}).get("fingerprint") == plan.fingerprint


def without_opted_out(table: pa.Table, optout: OptOutList) -> tuple[pa.Table, Counter[str]]:
    """The rows the opt-out list does not cover, and how many it left out, by reason."""
    if not optout or not table.num_rows:
        return table, Counter()
    columns = [name for name in ("name", "url", "page_url", "image_id", "phash") if name in table.column_names]
    verdicts = [optout.match(row) for row in table.select(columns).to_pylist()]
    return table.filter(pa.array([verdict is None for verdict in verdicts])), Counter(v[0] for v in verdicts if v)


@dataclass
class ShardResult:
    """What writing one shard found: its index rows, provenance counts and the rows left out, by reason. It
    crosses processes as JSON (`as_dict`): the shard step's tasks return it to the driver."""

    index: list[dict] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=lambda: {key: Counter() for key in PROVENANCE_COUNTS})
    opted_out: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"index": self.index, "counts": {key: dict(c) for key, c in self.counts.items()},
                "opted_out": dict(self.opted_out)}


class ShardWriter:
    """One shard file streamed identity by identity (row groups of `row_group_rows`), keeping its index rows
    and provenance counts, and its pair index where given: the shard step and a takedown's rewrite write shards
    the same way."""

    def __init__(self, stream: pa.NativeFile, name: str, row_group_rows: int, schema: pa.Schema | None = None,
                 pairs: PairIndexWriter | None = None):
        self.stream, self.name, self.row_group_rows, self.pairs = stream, name, row_group_rows, pairs
        self.writer = pq.ParquetWriter(stream, schema, compression="zstd") if schema is not None else None
        self.result, self.rows = ShardResult(), 0

    def add(self, identity: str, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.stream, table.schema, compression="zstd")
        self.writer.write_table(table.cast(self.writer.schema), row_group_size=self.row_group_rows)
        if table.num_rows:  # an identity left with no row (opted out, taken down) is not in the index
            self.result.index.append({"identity": identity, "shard": self.name, "row_start": self.rows,
                                      "num_rows": table.num_rows})
            if self.pairs is not None:
                self.pairs.add(identity, table)
        self.rows += table.num_rows
        for key in PROVENANCE_COUNTS:
            self.result.counts[key].update(str(value) for value in table[key].to_pylist())

    def close(self) -> ShardResult:
        if self.writer is not None:
            self.writer.close()
        return self.result


def write_shard(
    run: RunDir, upstream: str, target: str, identities: list[str], row_group_rows: int,
    optout: OptOutList | None = None, faces: FaceRefusals | None = None, pairs: PairRules | None = None,
) -> dict:
    """One shard from the upstream parts, and its pair index under `pairs`; returns its `ShardResult` as a dict."""
    removals = load_ledger(run)  # a takedown made after these rows were written still keeps them out
    name = target.rsplit("/", 1)[1]
    with run.open_atomic(target) as stream, pair_index(run, name, pairs) as pair_writer:
        shard = ShardWriter(stream, name, row_group_rows, pairs=pair_writer)
        for identity in identities:
            table = run.read_table(part_path(upstream, identity))
            table, taken_down = removals.withhold(table.filter(pc.equal(table["status"], OK)))
            table, _ = blur_table(table, removals.blurs)  # bystanders stay blurred in crops made again
            table, left_out = without_opted_out(table.drop_columns(ROW_STATUS), optout or OptOutList())
            table, by_face = (faces or FaceRefusals()).apply(table)
            shard.result.opted_out.update(taken_down + left_out + by_face)
            shard.add(identity, table)
        return shard.close().as_dict()


def finish(run: RunDir, plan: ShardPlan, results: list[dict], card: str) -> None:
    """Index, dataset card and marker after every shard; then the shards no index names are removed."""
    rows = sorted((row for result in results for row in result["index"]), key=lambda r: (r["shard"], r["row_start"]))
    run.write_table(INDEX, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    run.write_bytes(f"{SHARDS}/README.md", card.encode())
    written = sum(r["num_rows"] for r in rows)
    run.write_json(DONE, {"fingerprint": plan.fingerprint, "shards": len(plan.shards), "rows": written,
                          "opted_out": dict(opted_out_counts(results))})  # fmt: skip
    current = {plan.file(i).rsplit("/", 1)[1] for i in range(len(plan.shards))}
    for name in run.list_files(SHARDS, ".parquet"):
        if name.startswith("train-") and name not in current:
            run.delete(f"{SHARDS}/{name}")
    for name in run.list_files(f"{SHARDS}/{PAIRS}", ".parquet"):  # an older plan's, or `pairs_per_target: 0`
        if name not in current or not plan.pairs:
            run.delete(f"{SHARDS}/{PAIRS}/{name}")


INDEX_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),
        pa.field("shard", pa.string()),  # file name under shards/
        pa.field("row_start", pa.int64()),  # the identity's first row in that shard
        pa.field("num_rows", pa.int64()),
    ]
)


def shard_counts(run: RunDir) -> StageCounts:
    """What `status` shows for the shard step: shards written and the rows they hold."""
    counts = StageCounts("shard")
    done = run.read_state(DONE)
    if done and isinstance(done.get("rows"), int) and isinstance(done.get("shards"), int):  # else: to be written
        counts.add(done["rows"], {OK: done["rows"]}, {})
        counts.tasks_done = counts.tasks_total = done["shards"]
    return counts


def opted_out_counts(results: list[dict]) -> Counter[str]:
    """Rows the opt-out list left out of these shards, by reason."""
    total: Counter[str] = Counter()
    for result in results:
        total.update(result.get("opted_out", {}))
    return total


def dataset_card(config: PipelineConfig, funnel: str, results: list[dict], governance: str = "") -> str:
    """shards/README.md: what is in the dataset, how it was made, and where it came from."""
    rows = [row for result in results for row in result["index"]]
    provenance = {key: Counter() for key in PROVENANCE_COUNTS}
    for result in results:
        for key, counts in result["counts"].items():
            provenance[key].update(counts)
    opted_out = opted_out_counts(results)
    lines = [
        "# Dataset card",
        "",
        (
            f"{len(rows):,} identities, {sum(r['num_rows'] for r in rows):,} images, "
            f"{len({r['shard'] for r in rows})} shards (`train-*.parquet`); `_index.parquet` maps identity -> rows."
        ),
        (
            "Each row is one verified photo of its identity; the columns are documented in the pipeline's "
            "docs (data-format.md). Every image keeps its source URL and page: check each source's terms before use."
        ),
        *(["", "**This dataset is empty**: no image passed every stage (the funnel below shows where they dropped)."]
          if not rows else []),
        "",
        "## Funnel (rows per stage)",
        "",
        "```",
        funnel,
        "```",
        "",
        "## Provenance",
        "",
        *(f"- {key}: " + ", ".join(f"{value} {count:,}" for value, count in counts.most_common(20))
          for key, counts in provenance.items()),
        *([f"- left out by the opt-out list when these shards were written: {sum(opted_out.values()):,} rows"
           + "".join(f", {reason} {count:,}" for reason, count in opted_out.most_common())]
          if config.governance.optout else []),
        "",
        *([governance, ""] if governance else []),
        "## Config",
        "",
        "```yaml",
        config.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
