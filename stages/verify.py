"""Verify stage: keep the images whose faces agree with the dominant identity of the folder.

One task is one identity's folder (its `ok` filter rows). The stage reads only stored evidence
(embeddings, phash): it never decodes an image or runs a face model, so new thresholds are cheap.

The rule, and why:
1. Cluster every face of the folder by average-linkage agglomerative clustering of cosine
   similarity, cut at `cluster_threshold`. It needs no number of clusters, is deterministic for a
   given input order (rows are sorted by `image_id` first), and, unlike single linkage, does not
   chain two people together through one ambiguous face. A summed-similarity score (the paper's)
   ranks faces but needs a second, data-dependent cut and says nothing about a competing cluster;
   the clusters give cluster size, purity and the competing flag directly.
2. The dominant cluster covers the most images (ties: the tighter one, then the smallest image_id).
   Its centroid is the mean of one face per image (the face closest to the rest of the cluster).
3. Each face is scored against the centroid of the dominant cluster's *other* images (leave one
   image out), so an image never vouches for itself and members and outsiders share one scale.
   An image's target face is its best-scoring face; below `threshold` the image is dropped
   (`not_target_identity`). This also picks the right person in group photos.
4. Near-duplicates (the same photo resized, re-encoded, cropped or mirrored) share a `dup_group`:
   connected components of "phash within `dup_hamming` bits, or target faces at least
   `dup_similarity` alike"; the group is named by its smallest image_id.
5. The target face must pass the quality gates of `verify.quality` (stages/face_gates.py: pose,
   sharpness, detector score, share of the image, large faces), each with its own drop reason; they
   read the evidence filter stored, so re-tuning one re-runs verify only.
6. Across names, before the tasks (`before_tasks`: stages/verify_run.py, stages/identity_choice.py): a
   folder whose dominant person is better supported under another name (a co-star of a cast crawl) takes
   its next cluster, or, with none of `min_images` photos, drops as `identity_is_other_name`.
7. An identity needs `min_images` distinct kept photos (duplicate groups), since training takes
   reference and target from different photos; otherwise its kept rows drop as `too_few_images`.
8. With `max_images: K`, an identity keeps the K photos that best cover its variety (stages/diversity.py:
   farthest-point selection over pose and embedding); the others drop as `not_selected_for_diversity`.
A curator's decisions come last (stages/curation.py): photos rejected or split off stay out of the clustering
and drop (`curator_rejected`, `curator_split`), accepted ones and chosen target faces are kept, `decided_by` curator.
A photo split into another identity of the run joins that identity's task (its filter row, read from the source's
part) as if accepted there.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.decisions import Decision as Curated
from pipeline.core.errors import UserError
from pipeline.core.schema import OK, VERIFICATION
from pipeline.core.names import Identity
from pipeline.core.reasons import (IDENTITY_IS_OTHER_NAME, NOT_SELECTED_FOR_DIVERSITY, NOT_TARGET_IDENTITY, NO_FACE,
                                    TOO_FEW_IMAGES)
from pipeline.core.rundir import RunDir
from stages.base import Row, Stage, drop, keep
from stages.curation import CURATOR, Curation, decisions_by_identity, split_in, splits_into, taken_in, verify_inputs
from stages.diversity import not_selected
from stages.face_clusters import Decision, Folder, Settings, decide, dup_groups
from stages.face_gates import LARGE_FACE_RATIO, Gates, failures, large_faces
from stages.faces import applied_calibration, calibrations
from stages.identity_choice import OTHER_NAME, PICK
from stages.run_step import ByIdentity, StepFiles

FILES = StepFiles("verify")  # the identity choice across names (stages/verify_run.py), beside the stage's parts


def image_columns(decision: Decision, image: int, target: int, faces: list[Row], group: str) -> Row:
    runner_up = decision.runner_up[image]
    return {
        "target_face": target,  # index within the image's own faces
        "sim_to_centroid": float(decision.sim[image]),
        "runner_up_sim": None if np.isnan(runner_up) else float(runner_up),
        "dup_group": group,
        "large_faces": large_faces(faces, target),
    }


def outcome(columns: Row, passed: bool, failed: list[tuple[str, str]], distinct: int, settings: Settings) -> Row:
    if not passed:
        detail = f"best face {columns['sim_to_centroid']:.3f} < {settings.threshold}"
        return drop(NOT_TARGET_IDENTITY, detail, **columns)
    if failed:  # the first reason names the row; the detail lists every gate it fails, for re-tuning
        return drop(failed[0][0], "; ".join(detail for _, detail in failed), **columns)
    if distinct < settings.min_images:
        return drop(TOO_FEW_IMAGES, f"{distinct} distinct photos kept < {settings.min_images}", **columns)
    return keep(**columns)


class VerifyStage(Stage):
    name = "verify"
    sections = ("verify",)
    requires = ("faces", "phash", "face_backend")
    produces = VERIFICATION
    version = 3  # 2: rows record the calibration they were decided with; 3: and whether a curator decided them
    one_to_one = False  # photos a curator split into the identity join its rows; `process` keeps every own row
    tasks_per_call = 32  # numbers only, milliseconds a task: Ray's per-call cost would dominate

    @classmethod
    def constants(cls) -> dict[str, Any]:
        return {"calibrations": calibrations(), "large_face_ratio": LARGE_FACE_RATIO}

    @classmethod
    def task_inputs(cls, run: RunDir) -> dict[str, str]:
        return verify_inputs(run)  # an identity with new photo decisions, or photos split into it, is verified again

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        try:
            applied_calibration(config, config.face.backend)
        except ValueError as exc:
            raise UserError(str(exc), "or add a calibration to the backend (docs/architecture.md)") from exc

    @classmethod
    def before_tasks(cls, upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity],
                     force: bool) -> None:
        """The identity choice across names, made again unless current (stages/verify_run.py)."""
        from stages.verify_run import refresh  # it reads this module's names

        refresh(upstream, config, run, identities, force)

    @functools.cached_property
    def choices(self) -> ByIdentity | None:
        """The run's identity choice; absent only where verify runs outside a planned run (a unit test)."""
        return ByIdentity(self.run, FILES.decisions) if self.run.exists(FILES.decisions) else None

    def setup(self) -> None:
        """scipy once per worker, before the first task; not at module import, as a resume imports every stage."""
        import scipy.cluster.hierarchy
        import scipy.sparse.csgraph  # noqa: F401

    @functools.cached_property
    def decisions(self) -> dict[str, list[Curated]]:
        return decisions_by_identity(self.run)  # a curator's, read at the first task

    @functools.cached_property
    def splits(self) -> dict[str, list[Curated]]:
        return splits_into(self.decisions)  # per identity, the photos a curator split into it

    def process(self, rows: pa.Table) -> pa.Table:
        own = rows.to_pylist()
        slug = own[0]["identity"] if own else None
        splits = self.splits.get(slug, []) if own else []
        incoming = split_in(self.run, splits, slug, own[0]["name"]) if splits else []
        records = own + [row for row in incoming if row["image_id"] not in {r["image_id"] for r in own}]
        decisions = taken_in(records[len(own):], splits) + self.decisions.get(slug, [])
        curation = Curation.of(decisions)
        clustered = (r for r in records if r["faces"] and not curation.left_out(r["image_id"]))
        with_faces = sorted(clustered, key=lambda r: r["image_id"])
        choice = self.choice(records[0]["identity"]) if records else None
        verdicts = self.verify(with_faces, choice) if with_faces else {}
        no_face = drop(NO_FACE, "no face reached verify")  # the filter drops these; never lose a row
        out = [{**r, **verdicts.get(r["image_id"], no_face)} for r in records]
        out = curation.applied(out, self.config.verify.min_images)
        out[len(own):] = [{**row, "decided_by": CURATOR} for row in out[len(own):]]  # taken in by a split
        return self.to_table(out, rows.schema)

    def choice(self, identity: str) -> Row | None:
        """The run's choice for this identity where it differs from the folder's own dominant person."""
        return next(iter(self.choices.of(identity)), None) if self.choices else None

    def verify(self, rows: list[Row], choice: Row | None = None) -> dict[str, Row]:
        """image_id -> the verify columns, for rows that all have faces, sorted by image_id."""
        calibration = applied_calibration(self.config, backend_of(rows))
        settings, gates = Settings.of(self.config.verify, calibration), Gates.of(self.config.verify.quality, calibration)
        folder = Folder.of(rows)
        person = np.asarray(choice["centroid"]) if choice and choice["decision"] == PICK else None
        decision = decide(folder, settings, person)
        groups = dup_groups(folder, decision.target, settings)
        targets = decision.target - np.searchsorted(folder.owner, np.arange(folder.num_images))
        failed = [failures(row["faces"], int(target), gates) for row, target in zip(rows, targets, strict=True)]
        usable = decision.passed & np.array([not found for found in failed])
        limit = self.config.verify.max_images  # the K most varied photos (stages/diversity.py)
        for i, detail in not_selected(rows, targets, usable, decision.sim, groups, limit).items():
            failed[i].append((NOT_SELECTED_FOR_DIVERSITY, detail))
            usable[i] = False
        distinct = len({groups[i] for i in np.flatnonzero(usable)})  # photos training can use
        identity = {
            "cluster_size": decision.cluster_size,
            "identity_purity": decision.cluster_size / folder.num_images,
            "identity_competing": decision.competing,
            "identity_kept": int(usable.sum()) if distinct >= settings.min_images else 0,
            "calibration": asdict(calibration),
        }
        if choice and choice["decision"] == OTHER_NAME:
            identity["identity_kept"] = 0
        verdicts = {
            image_id: outcome(
                {**identity, **image_columns(decision, i, int(targets[i]), rows[i]["faces"], groups[i])},
                bool(decision.passed[i]),
                failed[i],
                distinct,
                settings,
            )
            for i, image_id in enumerate(folder.image_ids)
        }
        return {image_id: given_away(verdict, choice) for image_id, verdict in verdicts.items()}


def given_away(verdict: Row, choice: Row | None) -> Row:
    """A kept photo of a folder whose person another name keeps: dropped, its verify columns left as evidence."""
    if not choice or choice["decision"] != OTHER_NAME or verdict["status"] != OK:
        return verdict
    return {**verdict, **drop(IDENTITY_IS_OTHER_NAME, choice["detail"])}


def backend_of(rows: list[Row]) -> str:
    backends = {row["face_backend"] for row in rows}
    if len(backends) != 1:
        raise ValueError(f"one identity's faces come from several backends {sorted(map(str, backends))}; re-run filter")
    return backends.pop()
