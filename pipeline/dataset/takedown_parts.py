"""Takedowns in the stages: apply the removals ledger to one identity's parts, markers and raw bytes.

A removed row ends as a fresh run that consulted the ledger would leave it: crawl keeps it as
`dropped` / `taken_down` (its raw bytes deleted), every later stage no longer has it (it never
reached them), so nothing downstream holds its crops, masks, embeddings or captions. A removed
identity keeps one crawl row (`taken_down`, not searched for) and empty parts after it.

Markers are rewritten to match (rows, reasons, output digest) and re-chained (a downstream marker
that was current names the new upstream digest), so a resume redoes no task (hygiene's decisions
across identities are made again, as their input changed, and only the identities whose decisions
change re-run). What a stage computed over an identity's whole set (verify's centroid similarities,
safety's median age, caption's class word) is kept as it was, the removed photos still counted in: `run --stage verify --force`, then
`run`, recomputes it for the identities that changed (verify is deterministic, so no other re-runs).

Each identity is rewritten last stage first, its raw bytes then deleted and its crawl part written
last, so a run killed midway still shows the crawl rows as pending: the same `remove` finishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as with_fields

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.removals import TAKEN_DOWN, Ledger, Removal
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from pipeline.core.markers import (
    Marker, consumed, count_outcomes, marker_path, part_path, read_marker, task_digest, write_marker,
)
from pipeline.engine.registry import STAGES
from pipeline.engine.runner import content_digest
from pipeline.dataset import blur

CRAWL = STAGES[0].name
ENTRIES = [stage.name for stage in STAGES if not stage.one_to_one]  # where rows enter a task: a source, a merge
LIGHT = ("identity", "image_id", "url", "page_url", "merged_from", "reason")  # what `pending` reads
BLUR_KEYS = ("identity", "image_id", "merged_from", "blurred_faces")  # what `pending` reads of a part with crops


@dataclass
class Outcome:
    identity: str
    rows: int = 0  # crawl rows newly taken down
    photos: int = 0  # of them, rows that had reached the later stages (whole-set figures counted them)
    image_ids: set[str] = field(default_factory=set)  # photos gone from this identity
    raw_files: int = 0


def crawled(run: RunDir) -> list[str]:
    """Every identity with a crawl part, listed or not in today's names."""
    names = run.list_files(f"stages/{CRAWL}", ".parquet")
    return [name.removeprefix("part-").removesuffix(".parquet") for name in names if name.startswith("part-")]


def pending(run: RunDir, ledger: Ledger, slug: str) -> bool:
    """Whether a covered row is left where rows enter the identity's parts: in its crawl part, not yet
    taken down; or in a later such stage at all (another identity's photos merged into this one)."""
    for stage in ENTRIES:
        rel = part_path(stage, slug)
        if not run.exists(rel):
            continue
        present = pq.read_schema(run.path(rel), filesystem=run.fs).names
        table = run.read_table(rel, [column for column in LIGHT if column in present])
        reasons = table["reason"].to_pylist()
        if any(match and (stage != CRAWL or reason != TAKEN_DOWN)
               for match, reason in zip(ledger.matches(table), reasons, strict=True)):
            return True
    return bool(ledger.blurs) and _blur_pending(run, ledger, slug)


def _blur_pending(run: RunDir, ledger: Ledger, slug: str) -> bool:
    """Whether a part holding crops has a bystander face the ledger blurs and it does not show blurred yet."""
    for stage in STAGES:
        rel = part_path(stage.name, slug)
        if run.exists(rel):
            present = pq.read_schema(run.path(rel), filesystem=run.fs).names
            if "crop_image" in present:
                rows = run.read_table(rel, [column for column in BLUR_KEYS if column in present]).to_pylist()
                if any(blur.pending(row, ledger.blurs) for row in rows):
                    return True
    return False


def take_down(run: RunDir, ledger: Ledger, slug: str) -> Outcome:
    parts = {stage.name: run.read_table(part_path(stage.name, slug))
             for stage in STAGES if run.exists(part_path(stage.name, slug))}
    crawl = parts[CRAWL]
    found = ledger.matches(crawl)
    whole = ledger.identity(slug)
    covered = [row for row, match in zip(crawl.to_pylist(), found, strict=True) if match is not None]
    outcome = Outcome(slug, sum(row["reason"] != TAKEN_DOWN for row in covered),
                      image_ids={row["image_id"] for row in covered if row["image_id"]})
    new = {CRAWL: _one_row(crawl, whole) if whole else _mark(crawl, found)}
    for name, table in parts.items():
        if name != CRAWL:
            new[name] = table.slice(0, 0) if whole else blur.blur_table(_without(table, ledger, outcome.image_ids),
                                                                         ledger.blurs)[0]
    after_crawl = STAGES[1].name
    if after_crawl in parts and not whole:
        outcome.photos = parts[after_crawl].num_rows - new[after_crawl].num_rows
    markers = _markers(run, slug, new)
    for name in reversed([n for n in new if n != CRAWL]):
        _write(run, name, slug, new[name], markers.get(name))
    outcome.raw_files = _delete_raw(run, slug, crawl, found, whole is not None)
    _write(run, CRAWL, slug, new[CRAWL], markers.get(CRAWL))
    return outcome


def _one_row(crawl: pa.Table, removal: Removal) -> pa.Table:
    """What the crawl writes for a removed identity: one row, no search made."""
    row = {"identity": crawl["identity"][0].as_py(), "name": crawl["name"][0].as_py(), "status": DROPPED,
           "reason": TAKEN_DOWN, "detail": removal.detail}
    return pa.Table.from_pylist([row], schema=crawl.schema)


def _mark(crawl: pa.Table, found: list) -> pa.Table:
    """Covered rows become `taken_down`; their bytes are deleted, so they point at none."""
    rows = [row if match is None else {**row, "status": DROPPED, "reason": TAKEN_DOWN, "detail": match.detail,
                                       "raw_path": None}
            for row, match in zip(crawl.to_pylist(), found, strict=True)]
    return pa.Table.from_pylist(rows, schema=crawl.schema)


def _without(table: pa.Table, ledger: Ledger, gone: set[str]) -> pa.Table:
    keep = [match is None and image_id not in gone
            for match, image_id in zip(ledger.matches(table), table["image_id"].to_pylist(), strict=True)]
    return table.filter(pa.array(keep, pa.bool_()))


def _markers(run: RunDir, slug: str, new: dict[str, pa.Table]) -> dict[str, Marker]:
    """New markers for the rewritten parts, chained: a marker current on its old input names the new one."""
    markers: dict[str, Marker] = {}
    upstream: tuple[Marker, str, int] | None = None  # its old marker, new digest, new `ok` rows
    for stage in STAGES:
        old = read_marker(run, stage.name, slug) if stage.name in new else None  # torn: none
        if old is None:  # no part, or a part without a marker: nothing downstream can be current on it
            upstream = None
            continue
        table = new[stage.name]
        statuses, reasons = count_outcomes(table)
        digest = content_digest(table.drop_columns(list(stage.volatile)))
        changes: dict = {"output_digest": digest, "rows_out": table.num_rows, "statuses": statuses, "reasons": reasons}
        if upstream is not None:
            current = consumed(old.input_digest, upstream[0].output_digest)
            extra = old.input_digest.partition("+")[2]  # a curator's decisions the task also consumed
            changes |= {"rows_in": upstream[2],
                        "input_digest": task_digest(upstream[1], extra) if current else old.input_digest}
        markers[stage.name] = with_fields(old, **changes)
        upstream = (old, digest, statuses.get(OK, 0))
    return markers


def _write(run: RunDir, stage: str, slug: str, table: pa.Table, marker: Marker | None) -> None:
    """The part, then its marker (a part that had no marker gets none)."""
    run.write_table(part_path(stage, slug), table)
    if marker is not None:
        write_marker(run, marker)


def _delete_raw(run: RunDir, slug: str, crawl: pa.Table, found: list, whole: bool) -> int:
    """The downloaded bytes of the covered rows; of a removed identity, its whole folder."""
    if whole:
        files = run.list_files(f"raw/{slug}")
        run.fs.delete_dir_contents(run.path(f"raw/{slug}"), missing_dir_ok=True)
        return len(files)
    paths = [path for path, match in zip(crawl["raw_path"].to_pylist(), found, strict=True) if match and path]
    for path in paths:
        run.delete(path)
    return len(paths)
