"""The verify stage's whole-run step: the run's identity choice (`stages/identity_choice.py`), made before
verify's tasks are planned; when it is current, and what a change forgets, is `stages/run_step.py`'s.

It runs on the driver: one streaming pass over the filter parts, a few identities at a time (pyarrow reads
their parts in parallel), clustering each folder's faces as verify does (a millisecond or two a folder),
then blocked matrix products over one float16 centroid per candidate cluster. Memory holds one chunk of
folders and the candidates' centroids (about 100 MB at 100k names).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.core.config import PipelineConfig
from pipeline.core.markers import Marker, part_path, read_markers
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from stages import run_step
from stages.cross_identity import GROUPS_PER_READ, Rules, merge_groups, one_backend
from stages.face_clusters import Folder, Settings, candidates
from stages.faces import applied_calibration
from stages.identity_choice import OTHER_NAME, PICK, Pool, choose
from stages.verify import FILES, VerifyStage  # the stage's hook imports this module lazily

COLUMNS = ["identity", "image_id", "phash", "faces", "face_backend"]


def refresh(upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity], force: bool) -> None:
    """Before verify is planned: the identity choice, unless it is current (or nothing is filtered yet)."""
    listed = {identity.slug for identity in identities}
    inputs = {slug: marker for slug, marker in read_markers(run, upstream).items() if slug in listed}
    if not inputs:
        return  # the plan reports the missing upstream output
    fingerprint = run_fingerprint(config, inputs)
    if not force and run_step.is_current(run, FILES, fingerprint):
        return
    started = time.monotonic()
    present = sorted(slug for slug, marker in inputs.items() if marker.part)  # an empty task has no part
    pool, backends = census(run, upstream, present, config)
    groups = {slug: k for k, group in enumerate(merge_groups(identities, config.hygiene.merge)) for slug in group}
    chosen = choose(pool, groups, same_person_cut(config, backends))
    decisions = chosen["decision"].to_pylist()
    counts = {"names": len(pool.names), "candidates": len(pool.owner), "picked_other_cluster": decisions.count(PICK),
              "identity_is_other_name": decisions.count(OTHER_NAME)}
    note = {"fingerprint": fingerprint, "counts": counts, "seconds": time.monotonic() - started}
    run_step.publish(run, FILES, chosen, note)


def run_fingerprint(config: PipelineConfig, inputs: dict[str, Marker]) -> str:
    """Two of hygiene's settings too: its merge groups never compete, and its same-person cut is the rule's (its
    label margin is none of this step's business: a new one re-labels faces without a new choice)."""
    hygiene = {"merge": config.hygiene.merge, "same_person_similarity": config.hygiene.same_person_similarity}
    stage = config.fingerprint(("verify",), VerifyStage.version, {**VerifyStage.constants(), "hygiene": hygiene})
    return run_step.fingerprint(stage, inputs)


def same_person_cut(config: PipelineConfig, backends: set[str]) -> float:
    """Hygiene's same-person cosine for the run's one face backend (without a face there is no candidate)."""
    one_backend(backends)
    if not backends:
        return 1.0
    return Rules.of(config, asdict(applied_calibration(config, next(iter(backends))))).same_person


def census(run: RunDir, upstream: str, slugs: list[str], config: PipelineConfig) -> tuple[Pool, set[str]]:
    """Every name's candidate clusters, read a chunk of names at a time."""
    pool, backends = Pool(), set()
    for first in range(0, len(slugs), GROUPS_PER_READ):
        paths = [run.path(part_path(upstream, slug)) for slug in slugs[first : first + GROUPS_PER_READ]]
        table = ds.dataset(paths, filesystem=run.fs, format="parquet").to_table(
            columns=COLUMNS, filter=(pc.field("status") == OK) & (pc.list_value_length(pc.field("faces")) > 0))
        backends |= set(table["face_backend"].unique().to_pylist())
        one_backend(backends)
        for slug, rows in by_identity(table):
            calibration = applied_calibration(config, rows["face_backend"][0].as_py())
            folder = Folder.of_table(rows)
            pool.add(slug, folder.num_images, candidates(folder, Settings.of(config.verify, calibration)))
    return pool, backends


def by_identity(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """One table per identity, each sorted by image_id as verify sorts a folder."""
    if not table.num_rows:
        return []
    ordered = table.sort_by([("identity", "ascending"), ("image_id", "ascending")])
    names = ordered["identity"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], len(names)]
    return [(str(names[a]), ordered.slice(a, b - a)) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
