"""The hygiene stage's whole-run step: decisions across identities, made before the stage's tasks are planned.

Its unit of work is the run: `refresh` is the stage's `before_tasks` hook, which the engine calls before it
plans the stage's tasks (as it calls every stage's), so resume, `--force`
and `--stage hygiene` treat it as they treat tasks. It is current when `done.json` holds today's fingerprint:
the stage's (hygiene and verify sections, version) and every upstream part's digest. Otherwise the decisions
are made again and the tasks whose decisions changed lose their done-marker, so they (and, where their
output changes, the stages after them) run again; the others are left as they are.

It runs on the driver, in this process: one streaming pass over the upstream parts (pyarrow reads each
chunk of parts in parallel), then matrix products that numpy's BLAS already spreads over the cores. A Ray
task would add a hop and no parallelism, and would start Ray for a plan that may have nothing to run.
Memory is bounded as `stages/cross_identity.py` says (a few hundred MB at 100k identities of 50 photos).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE_EVIDENCE, OK, ROW_KEYS, VERIFICATION
from pipeline.core.markers import Marker, forget_markers, part_path, read_markers
from stages.curation import curated_merges, merge_digest, merged_groups
from stages.cross_identity import COLUMNS, Outcome, Reader, decide, merge_groups
from stages.hygiene import DECISIONS, RUN_FOLDER, HygieneStage  # the stage's hook imports this module lazily

PAIRS = f"{RUN_FOLDER}/pairs.parquet"
DONE = f"{RUN_FOLDER}/done.json"
DECISION_ROW_GROUP = 1024


def refresh(upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity], force: bool) -> None:
    """Before the hygiene stage is planned: its decisions, unless they are current (or nothing is verified)."""
    listed = {identity.slug for identity in identities}
    inputs = {slug: marker for slug, marker in read_markers(run, upstream).items() if slug in listed}
    if not inputs:
        return  # the plan reports the missing upstream output
    merges = curated_merges(run)  # a curator's (stages/curation.py), beside hygiene.merge
    fingerprint = run_fingerprint(config, inputs, merge_digest(merges))
    if not force and is_current(run, fingerprint):
        return
    started = time.monotonic()
    groups = merged_groups(merge_groups(identities, config.hygiene.merge), merges)
    parts = {slug: (part_path(upstream, slug), marker.output_digest) for slug, marker in inputs.items()}
    present = {slug for slug, marker in inputs.items() if marker.part}  # an empty task has no part
    outcome = decide(groups, reader(run, upstream, present), config, parts)
    publish(run, outcome, fingerprint, time.monotonic() - started)


def run_fingerprint(config: PipelineConfig, inputs: dict[str, Marker], merges: str = "") -> str:
    digests = sorted((slug, marker.output_digest) for slug, marker in inputs.items())
    text = json.dumps({"stage": HygieneStage.fingerprint(config) + merges, "inputs": digests})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_current(run: RunDir, fingerprint: str) -> bool:
    return (run.read_state(DONE) or {}).get("fingerprint") == fingerprint


def reader(run: RunDir, upstream: str, present: set[str]) -> Reader:
    """Identities -> their kept rows, only the columns the step needs, their parts read in parallel."""

    def read(slugs: list[str]) -> pa.Table:
        paths = [run.path(part_path(upstream, slug)) for slug in slugs if slug in present]
        if not paths:
            return empty()
        dataset = ds.dataset(paths, filesystem=run.fs, format="parquet")
        return dataset.to_table(columns=COLUMNS, filter=pc.field("status") == OK)

    return read


def empty() -> pa.Table:
    fields = {field.name: field for schema in (ROW_KEYS, FACE_EVIDENCE, VERIFICATION) for field in schema}
    return pa.schema([fields[name] for name in COLUMNS]).empty_table()


def publish(run: RunDir, outcome: Outcome, fingerprint: str, seconds: float) -> None:
    """Stale tasks lose their marker first, then the decisions are replaced, then `done.json` says so:
    killed anywhere in between, the next plan makes them again and finds the same stale tasks."""
    old = run.read_table(DECISIONS) if run.exists(DECISIONS) else None
    forget_markers(run, HygieneStage.name, changed_tasks(old, outcome.decisions))
    with run.open_atomic(DECISIONS) as stream:  # small row groups: a task reads only its own (stages/hygiene.py)
        pq.write_table(outcome.decisions, stream, compression="zstd", row_group_size=DECISION_ROW_GROUP)
    run.write_table(PAIRS, outcome.pairs)
    rules = outcome.rules.__dict__ if outcome.rules else None
    run.write_json(DONE, {"fingerprint": fingerprint, "counts": outcome.counts, "rules": rules, "seconds": seconds})


def changed_tasks(old: pa.Table | None, new: pa.Table) -> set[str]:
    """Identities whose decisions differ between two decision tables."""
    before, after = by_identity(old), by_identity(new)
    return {slug for slug in before.keys() | after.keys() if before.get(slug) != after.get(slug)}


def by_identity(decisions: pa.Table | None) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = defaultdict(list)
    for row in decisions.to_pylist() if decisions is not None else []:
        rows[row["identity"]].append(json.dumps(row, sort_keys=True))
    return {slug: sorted(found) for slug, found in rows.items()}


def summary(run: RunDir) -> dict | None:
    """What the last whole-run step found (report, status): counts, rules, seconds; None before it ran."""
    return run.read_state(DONE)
