"""Hygiene stage: the decisions made across identities, applied to one identity's verified rows.

The decisions need every identity at once, so they are made once per run, before the stage's tasks are
planned (its `before_tasks` hook: `stages/hygiene_run.py` runs `stages/cross_identity.py`), and stored in DECISIONS; each task
then reads only its own and marks its rows:

- a photo kept under another identity whose centroid is closer to the face: `claimed_by_other_identity`,
  with that identity in `kept_under`;
- an identity merged into another (`hygiene.merge`, or a curator's merge: stages/curation.py, `decided_by`): every row `merged_into_other_identity`, `kept_under`
  the target; the target's task takes those rows in (`merged_from`), drops a photo it already holds as
  `duplicate` and re-draws the near-duplicate groups over the joined photos;
- identities whose centroids are as close as one person's photos: `possible_same_person` on every row;
- an identity left with fewer than `verify.min_images` distinct photos: `too_few_images`, as verify would.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import HYGIENE, OK
from pipeline.core.reasons import CLAIMED_BY_OTHER_IDENTITY, DUPLICATE, MERGED_INTO_OTHER_IDENTITY, TOO_FEW_IMAGES
from stages.base import Row, Stage, drop, keep
from stages.curation import curated_merges, marked_merges
from stages.cross_identity import CLAIMED, MERGE_FROM, MERGED_INTO, SAME_PERSON, merge_groups
from stages.face_clusters import Folder, Settings, dup_groups
from stages.face_labels import labelled
from stages.faces import Calibration
from stages.run_step import ByIdentity, StepFiles

FILES = StepFiles("hygiene")  # the whole-run step's decisions and done-note, beside the stage's parts
DECISIONS = FILES.decisions
LABELS = f"{FILES.folder}/face_labels.parquet"  # every face's identity in photos with several (face_labels_run.py)


class HygieneStage(Stage):
    name = "hygiene"
    sections = ("hygiene", "verify")
    requires = ("faces", "phash", "face_backend", "target_face", "dup_group")
    produces = HYGIENE
    one_to_one = False  # a merge target takes other identities' rows in; `process` checks its own count
    tasks_per_call = 32  # a read, a filter and a write: milliseconds a task

    @classmethod
    def check_identities(cls, config: PipelineConfig, identities: list[Identity]) -> None:
        """A merge naming no listed identity is a user mistake: said before any work."""
        merge_groups(identities, config.hygiene.merge)

    @classmethod
    def before_tasks(cls, upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity],
                     force: bool) -> None:
        """The decisions across identities, made again unless current (stages/hygiene_run.py)."""
        from stages.hygiene_run import refresh  # it reads this module's names

        refresh(upstream, config, run, identities, force)

    @functools.cached_property
    def decisions(self) -> ByIdentity:
        """Opened at the first task, not in `setup`: a worker may be built before the plan makes the file."""
        if not self.run.exists(DECISIONS):
            raise RuntimeError(f"no {DECISIONS} in the run: plan the hygiene stage (python -m pipeline run) first")
        return ByIdentity(self.run, DECISIONS)

    @functools.cached_property
    def merges(self) -> dict[str, str]:
        return curated_merges(self.run)  # a curator's merges (hygiene_run joins them to hygiene.merge)

    @functools.cached_property
    def labels(self) -> ByIdentity:
        """Every face's identity in the photos with several faces (stages/face_labels_run.py)."""
        if not self.run.exists(LABELS):
            raise RuntimeError(f"no {LABELS} in the run: plan the hygiene stage (python -m pipeline run) first")
        return ByIdentity(self.run, LABELS)

    def process(self, rows: pa.Table) -> pa.Table:
        if not rows.num_rows:
            return self.to_table([], rows.schema)
        own = rows.to_pylist()
        decisions = self.decisions.of(own[0]["identity"])
        pulled = [row for d in decisions if d["decision"] == MERGE_FROM for row in self.pulled(d, own[0])]
        out = flagged(judged(own + pulled, decisions), decisions)
        if pulled:
            regroup(out, Settings.of(self.config.verify, Calibration(**out[0]["calibration"])))
        out = labelled(enough_photos(out, self.config.verify.min_images), self.labels.of(own[0]["identity"]))
        out = marked_merges(out, self.merges)
        if len(out) != len(own) + len(pulled):
            raise RuntimeError(f"hygiene returned {len(out)} rows for {len(own)} + {len(pulled)} merged in")
        return self.to_table(out, rows.schema)

    def pulled(self, decision: dict, head: Row) -> list[Row]:
        """A merged identity's kept rows, now this identity's."""
        table = self.run.read_table(decision["part"])
        rows = table.filter(pc.equal(table["status"], OK)).to_pylist()
        return [{**row, "identity": head["identity"], "name": head["name"], "merged_from": row["identity"]}
                for row in rows]


def judged(rows: list[Row], decisions: list[dict]) -> list[Row]:
    """Each row with its verdict: merged away, a photo held twice after a merge, claimed elsewhere, or kept."""
    into = next((d["other"] for d in decisions if d["decision"] == MERGED_INTO), None)
    claimed = {d["image_id"]: d for d in decisions if d["decision"] == CLAIMED}
    seen: set[str] = set()
    out = []
    for row in rows:
        if into:
            verdict = drop(MERGED_INTO_OTHER_IDENTITY, f"merged into {into} (hygiene.merge)", kept_under=into)
        elif row["image_id"] in seen:
            verdict = drop(DUPLICATE, "the same photo is already kept under this identity (hygiene.merge)")
        elif row["image_id"] in claimed:
            verdict = drop(CLAIMED_BY_OTHER_IDENTITY, claimed[row["image_id"]]["detail"],
                           kept_under=claimed[row["image_id"]]["other"])
        else:
            verdict = keep()
        seen.add(row["image_id"])
        out.append({**row, "kept_under": None, **verdict})
    return out


def flagged(rows: list[Row], decisions: list[dict]) -> list[Row]:
    """`possible_same_person` on every row: the other identities, closest first, and the closest's cosine."""
    pairs = sorted((d for d in decisions if d["decision"] == SAME_PERSON), key=lambda d: (-d["similarity"], d["other"]))
    others = [d["other"] for d in pairs] or None
    closest = pairs[0]["similarity"] if pairs else None
    return [{**row, "possible_same_person": others, "same_person_similarity": closest} for row in rows]


def regroup(rows: list[Row], settings: Settings) -> None:
    """Near-duplicate groups drawn again over the kept rows of a merged identity: copies from two folders
    must share a group, or training would take one as a reference for the other."""
    kept = [row for row in rows if row["status"] == OK]
    if not kept:
        return
    folder = Folder.of(kept)
    first_face = np.searchsorted(folder.owner, np.arange(folder.num_images))
    groups = dup_groups(folder, first_face + np.array([row["target_face"] for row in kept]), settings)
    for row, group in zip(kept, groups, strict=True):
        row["dup_group"] = group


def enough_photos(rows: list[Row], min_images: int) -> list[Row]:
    """Verify's rule again after photos left or joined: too few distinct photos drop the rest."""
    distinct = len({row["dup_group"] or row["image_id"] for row in rows if row["status"] == OK})
    if distinct >= min_images:
        return rows
    detail = f"{distinct} distinct photos left after hygiene < {min_images}"
    return [{**row, **drop(TOO_FEW_IMAGES, detail)} if row["status"] == OK else row for row in rows]
