"""Takedowns in the dataset: rewrite the shards that hold removed rows, then the index, card and marker.

Only shards holding a covered row are rewritten (with their pair index), so every other shard stays byte for
byte as it was. A rewritten shard is streamed from itself, identity by identity, into the row groups the
shard step writes, under its own name and atomically; an emptied shard stays, empty with its
schema, so the `-of-N` names still hold. Then `_index.parquet`, the card and `_done.json`, which
stays current if the shards were (a later run does not rewrite them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.removals import Ledger
from pipeline.core.rundir import RunDir
from pipeline.dataset.write import card
from pipeline.core.markers import read_markers
from pipeline.engine.registry import STAGES
from pipeline.dataset import blur
from pipeline.dataset.takedown_parts import BLUR_KEYS
from pipeline.dataset.pair_index import PairRules, pair_index, pairs_file
from pipeline.dataset.shards import DONE, INDEX, INDEX_SCHEMA, PROVENANCE_COUNTS, SHARDS, ShardWriter, plan_shards

KEYS = ["identity", "image_id", "url", "page_url"]  # what the ledger matches on


def shard_files(run: RunDir) -> list[str]:
    """Every shard file, named by the index or not (a killed shard step can leave an older plan's)."""
    return [name for name in run.list_files(SHARDS, ".parquet") if name.startswith("train-")]


def holding(run: RunDir, ledger: Ledger) -> list[str]:
    """The shard files with a row the ledger covers, or a bystander face it blurs that is not blurred yet."""
    return [name for name in shard_files(run) if _holds(run, name, ledger)]


def _holds(run: RunDir, name: str, ledger: Ledger) -> bool:
    present = pq.read_schema(run.path(f"{SHARDS}/{name}"), filesystem=run.fs).names
    table = run.read_table(f"{SHARDS}/{name}", KEYS + [c for c in BLUR_KEYS if c in present and c not in KEYS])
    if any(ledger.matches(table)):
        return True
    return bool(ledger.blurs) and any(blur.pending(row, ledger.blurs) for row in table.to_pylist())


def by_identity(shard: pq.ParquetFile) -> Iterator[pa.Table]:
    """A shard's rows, one identity at a time in shard order, read a row group at a time."""
    pieces: list[pa.Table] = []
    for number in range(shard.num_row_groups):
        group = shard.read_row_group(number)
        ids = group["identity"].to_pylist()
        start = 0
        for end in range(1, len(ids) + 1):
            if end < len(ids) and ids[end] == ids[start]:
                continue
            if pieces and pieces[0]["identity"][0].as_py() != ids[start]:
                yield pa.concat_tables(pieces)
                pieces = []
            pieces.append(group.slice(start, end - start))
            start = end
    if pieces:
        yield pa.concat_tables(pieces)


def rewrite_shard(run: RunDir, name: str, ledger: Ledger, row_group_rows: int, pairs: PairRules | None = None) -> dict:
    """The shard without the rows the ledger covers, and its pair index under `pairs` (a removed photo leaves its
    pairs); its `ShardResult` as a dict, as `write_shard` returns it."""
    with run.fs.open_input_file(run.path(f"{SHARDS}/{name}")) as source:
        shard = pq.ParquetFile(source)
        with run.open_atomic(f"{SHARDS}/{name}") as stream, pair_index(run, name, pairs) as pair_writer:
            writer = ShardWriter(stream, name, row_group_rows, shard.schema_arrow, pair_writer)
            for table in by_identity(shard):
                table, _ = blur.blur_table(ledger.admitted(table), ledger.blurs)
                if table.num_rows:  # a removed identity leaves the shard and its index
                    writer.add(table["identity"][0].as_py(), table)
            result = writer.close().as_dict()
    if pairs is None:  # no pair index now: one written before must not keep a removed photo
        run.delete(pairs_file(name))
    return result


def untouched(run: RunDir, name: str, index: list[dict]) -> dict:
    """A shard left as it was, described as `write_shard` describes one (the card counts them all)."""
    table = run.read_table(f"{SHARDS}/{name}", list(PROVENANCE_COUNTS))
    counts = {key: dict(Counter(str(value) for value in table[key].to_pylist())) for key in PROVENANCE_COUNTS}
    return {"index": index, "counts": counts}


def rewrite_dataset(run: RunDir, config: PipelineConfig, identities: list[Identity], ledger: Ledger,
                    was_current: bool) -> list[str]:
    """Apply the ledger to the shards; returns the shard files rewritten."""
    rules = PairRules.of(config)
    rewritten = {name: rewrite_shard(run, name, ledger, config.shard.row_group_rows, rules)
                 for name in holding(run, ledger)}
    if not run.exists(INDEX):
        return sorted(rewritten)
    old = run.read_table(INDEX).to_pylist()
    results = [rewritten.get(name) or untouched(run, name, [row for row in old if row["shard"] == name])
               for name in sorted({row["shard"] for row in old})]
    rows = [row for result in results for row in result["index"]]
    run.write_table(INDEX, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
    done = run.read_state(DONE)  # None: a shard step was killed after its index (or left it torn)
    run.write_bytes(f"{SHARDS}/README.md", card(config, run, identities, [*results, _left_out(done)]).encode())
    if done is not None:
        if was_current:  # the markers changed with the parts: the plan of today's markers is what the shards hold
            done["fingerprint"] = plan_shards(config, identities, read_markers(run, STAGES[-1].name)).fingerprint
        run.write_json(DONE, {**done, "rows": sum(row["num_rows"] for row in rows)})
    return sorted(rewritten)


def _left_out(done: dict | None) -> dict:
    """What the shard step left out when it wrote the shards, as `_done.json` recorded it, in the form of
    a shard's result: the card keeps counting it."""
    return {"index": [], "counts": {key: {} for key in PROVENANCE_COUNTS}, "opted_out": (done or {}).get("opted_out", {})}
