"""What every whole-run step shares (a stage's `before_tasks`: verify's identity choice, hygiene's decisions).

A step reads every identity's upstream part on the driver and writes one table of decisions, sorted by
identity, that each task of its stage then reads its own part of. It is current when its `done.json` holds
today's fingerprint: the stage's own (config sections, version, constants) and every upstream part's digest.
Otherwise the decisions are made again and the tasks whose decisions changed lose their done-marker, so they
(and, where their output changes, the stages after them) run again; the others are left as they are.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.markers import Marker, forget_markers
from pipeline.core.rundir import RunDir

DECISION_ROW_GROUP = 1024  # small row groups: a task reads only its own (`ByIdentity`)


@dataclass(frozen=True)
class StepFiles:
    """Where one stage's whole-run step keeps its decisions and its done-note, beside the stage's parts."""

    stage: str

    @property
    def folder(self) -> str:
        return f"stages/{self.stage}/_run"

    @property
    def decisions(self) -> str:
        return f"{self.folder}/decisions.parquet"

    @property
    def done(self) -> str:
        return f"{self.folder}/done.json"


def fingerprint(stage_fingerprint: str, inputs: dict[str, Marker]) -> str:
    digests = sorted((slug, marker.output_digest) for slug, marker in inputs.items())
    text = json.dumps({"stage": stage_fingerprint, "inputs": digests})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_current(run: RunDir, files: StepFiles, today: str) -> bool:
    return run.exists(files.decisions) and (run.read_state(files.done) or {}).get("fingerprint") == today


def publish(run: RunDir, files: StepFiles, decisions: pa.Table, note: dict,
            extra: dict[str, pa.Table] | None = None) -> None:
    """`decisions` sorted by identity (`ByIdentity` reads them so).

    Stale tasks lose their marker first, then the decisions (and `extra` tables) are replaced, then
    `done.json` says so: killed anywhere in between, the next plan makes them again and finds the same
    stale tasks."""
    old = run.read_table(files.decisions) if run.exists(files.decisions) else None
    forget_markers(run, files.stage, changed_tasks(old, decisions))
    with run.open_atomic(files.decisions) as stream:
        pq.write_table(decisions, stream, compression="zstd", row_group_size=DECISION_ROW_GROUP)
    for path, table in (extra or {}).items():
        run.write_table(path, table)
    run.write_json(files.done, note)


def changed_tasks(old: pa.Table | None, new: pa.Table) -> set[str]:
    """Identities whose decisions differ between two decision tables."""
    before, after = by_identity(old), by_identity(new)
    return {slug for slug in before.keys() | after.keys() if before.get(slug) != after.get(slug)}


def by_identity(decisions: pa.Table | None) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = defaultdict(list)
    for row in decisions.to_pylist() if decisions is not None else []:
        rows[row["identity"]].append(json.dumps(row, sort_keys=True))
    return {slug: sorted(found) for slug, found in rows.items()}


class ByIdentity:
    """A step's decisions, sorted by identity in small row groups: each row group's identity range is read from
    the footer once, so a task reads one row group, not the whole file (100k tasks on 100k identities)."""

    def __init__(self, run: RunDir, path: str) -> None:
        self.file = pq.ParquetFile(run.fs.open_input_file(run.path(path)))
        meta = self.file.metadata
        stats = [(k, meta.row_group(k).column(0).statistics) for k in range(meta.num_row_groups)]
        self.groups = [(k, s.min, s.max) for k, s in stats if s is not None and s.has_min_max]
        self.highs = [high for _, _, high in self.groups]

    def of(self, identity: str) -> list[dict]:
        first = bisect.bisect_left(self.highs, identity)
        chosen = list(itertools.takewhile(lambda group: group[1] <= identity, self.groups[first:]))
        if not chosen:
            return []
        table = self.file.read_row_groups([k for k, _, _ in chosen])
        return table.filter(pc.equal(table["identity"], identity)).to_pylist()

