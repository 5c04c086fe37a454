"""The hygiene stage's whole-run step: decisions across identities, made before the stage's tasks are planned.

Its unit of work is the run: `refresh` is the stage's `before_tasks` hook, which the engine calls before it
plans the stage's tasks (as it calls every stage's), so resume, `--force` and `--stage hygiene` treat it as
they treat tasks; when it is current, and what a change forgets, is `stages/run_step.py`'s.

It runs on the driver, in this process: one streaming pass over the upstream parts (pyarrow reads each
chunk of parts in parallel), then matrix products that numpy's BLAS already spreads over the cores. A Ray
task would add a hop and no parallelism, and would start Ray for a plan that may have nothing to run.
Memory is bounded as `stages/cross_identity.py` says (a few hundred MB at 100k identities of 50 photos).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE_EVIDENCE, OK, ROW_KEYS, VERIFICATION
from pipeline.core.markers import Marker, part_path, read_markers
from stages import run_step
from stages.curation import curated_merges, merge_digest, merged_groups
from stages.cross_identity import COLUMNS, Outcome, Reader, decide, merge_groups
from stages.face_labels_run import COLUMNS as LABEL_COLUMNS, label_faces, label_rules, publish_labels
from stages.hygiene import FILES, HygieneStage  # the stage's hook imports this module lazily

PAIRS = f"{FILES.folder}/pairs.parquet"


def refresh(upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity], force: bool) -> None:
    """Before the hygiene stage is planned: its decisions, unless they are current (or nothing is verified)."""
    listed = {identity.slug for identity in identities}
    inputs = {slug: marker for slug, marker in read_markers(run, upstream).items() if slug in listed}
    if not inputs:
        return  # the plan reports the missing upstream output
    merges = curated_merges(run)  # a curator's (stages/curation.py), beside hygiene.merge
    fingerprint = run_fingerprint(config, inputs, merge_digest(merges))
    if not force and run_step.is_current(run, FILES, fingerprint):
        return
    started = time.monotonic()
    groups = merged_groups(merge_groups(identities, config.hygiene.merge), merges)
    parts = {slug: (part_path(upstream, slug), marker.output_digest) for slug, marker in inputs.items()}
    present = {slug for slug, marker in inputs.items() if marker.part}  # an empty task has no part
    outcome = decide(groups, reader(run, upstream, present), config, parts)
    labels = label_faces(outcome.census, reader(run, upstream, present, LABEL_COLUMNS), label_rules(config, outcome))
    publish_labels(run, labels)  # before the done-note, which `publish` writes last
    publish(run, outcome, fingerprint, time.monotonic() - started)


def run_fingerprint(config: PipelineConfig, inputs: dict[str, Marker], merges: str = "") -> str:
    return run_step.fingerprint(HygieneStage.fingerprint(config) + merges, inputs)


def reader(run: RunDir, upstream: str, present: set[str], columns: list[str] = COLUMNS) -> Reader:
    """Identities -> their kept rows, only the columns the step needs, their parts read in parallel."""

    def read(slugs: list[str]) -> pa.Table:
        paths = [run.path(part_path(upstream, slug)) for slug in slugs if slug in present]
        if not paths:
            return empty(columns)
        dataset = ds.dataset(paths, filesystem=run.fs, format="parquet")
        return dataset.to_table(columns=columns, filter=pc.field("status") == OK)

    return read


def empty(columns: list[str]) -> pa.Table:
    fields = {field.name: field for schema in (ROW_KEYS, FACE_EVIDENCE, VERIFICATION) for field in schema}
    return pa.schema([fields[name] for name in columns]).empty_table()


def publish(run: RunDir, outcome: Outcome, fingerprint: str, seconds: float) -> None:
    rules = outcome.rules.__dict__ if outcome.rules else None
    note = {"fingerprint": fingerprint, "counts": outcome.counts, "rules": rules, "seconds": seconds}
    run_step.publish(run, FILES, outcome.decisions, note, extra={PAIRS: outcome.pairs})


def summary(run: RunDir) -> dict | None:
    """What the last whole-run step found (report, status): counts, rules, seconds; None before it ran."""
    return run.read_state(FILES.done)
