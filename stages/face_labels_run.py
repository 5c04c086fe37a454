"""The face labels of the hygiene stage's whole-run step: every face of every kept photo with several faces, labelled
against every identity's centroid (`stages/face_labels.py`), written to LABELS for the stage's tasks.

It lives in hygiene's whole-run step because it needs what that step already holds: every identity's centroid
after the merges (the census), made by the one streaming pass over the verified rows; a stage of its own would
read them all again. Photos with one face need no row: their face is the target's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.markers import forget_markers
from pipeline.core.rundir import RunDir
from stages import run_step
from stages.cross_identity import GROUPS_PER_READ, Census, Outcome, Reader
from stages.face_labels import NO_IDENTITY, CentroidIndex, LabelRules, Photo, label_photo
from stages.hygiene import FILES, LABELS

COLUMNS = ["identity", "image_id", "faces", "target_face", "sim_to_centroid"]  # what the labelling reads
LABEL_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),  # the task that applies it: the identity the photo is kept under
        pa.field("image_id", pa.string()),
        pa.field("face_identities", pa.list_(pa.string())),  # per face of `faces`; null: no identity is sure
        pa.field("face_scores", pa.list_(pa.float32())),  # per face: its cosine to that identity's centroid
    ]
)


def label_rules(config: PipelineConfig, outcome: Outcome) -> LabelRules:
    """Verify's threshold as its rows recorded it (none kept: nothing to label), and the margin."""
    calibration = outcome.census.calibration or {"threshold": 1.0}
    return LabelRules(calibration["threshold"], config.hygiene.label_margin)


def publish_labels(run: RunDir, labels: pa.Table) -> None:
    """The tasks whose labels changed lose their marker, then LABELS is replaced (small row groups: a task reads
    its own, as it reads its decisions)."""
    old = run.read_table(LABELS) if run.exists(LABELS) else None
    forget_markers(run, FILES.stage, run_step.changed_tasks(old, labels))
    with run.open_atomic(LABELS) as stream:
        pq.write_table(labels, stream, compression="zstd", row_group_size=run_step.DECISION_ROW_GROUP)


def label_faces(census: Census, read: Reader, rules: LabelRules) -> pa.Table:
    """LABELS: a row per kept photo with several faces, per identity (merge groups as their target)."""
    active = census.active()
    if not len(active):
        return LABEL_SCHEMA.empty_table()
    index = CentroidIndex(census.centroids[active])
    position = np.full(len(census.groups), NO_IDENTITY, np.int64)
    position[active] = np.arange(len(active))
    names = np.array([census.names[group] for group in active], dtype=object)
    rows: list[dict] = []
    for first in range(0, len(census.groups), GROUPS_PER_READ):
        chunk = census.groups[first : first + GROUPS_PER_READ]
        group_of = {slug: position[first + k] for k, group in enumerate(chunk) for slug in group}
        rows += chunk_labels(with_several_faces(read([slug for group in chunk for slug in group])), group_of,
                             index, names, rules)
    data = pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)
    return data.sort_by([("identity", "ascending"), ("image_id", "ascending")]) if data.num_rows else data


def with_several_faces(table: pa.Table) -> pa.Table:
    return table.filter(pc.greater(pc.list_value_length(table["faces"]), 1)) if table.num_rows else table


def chunk_labels(table: pa.Table, group_of: dict[str, int], index: CentroidIndex, names: np.ndarray,
                 rules: LabelRules) -> list[dict]:
    """One search for every face of the chunk's photos, then each photo's assignment."""
    if not table.num_rows:
        return []
    faces = table["faces"].combine_chunks()
    counts = pc.list_value_length(faces).to_numpy(zero_copy_only=False)
    embeddings = pc.list_flatten(pc.list_flatten(faces).field("embedding"))
    vectors = embeddings.to_numpy(zero_copy_only=False).astype(np.float32).reshape(int(counts.sum()), -1)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    sims, ids = index.nearest(vectors)
    starts = np.cumsum(counts) - counts
    rows, seen = [], set()
    for k, row in enumerate(table.select(["identity", "image_id", "target_face", "sim_to_centroid"]).to_pylist()):
        own = int(group_of[row["identity"]])
        if (own, row["image_id"]) in seen:  # one photo in two folders of a merge group
            continue
        seen.add((own, row["image_id"]))
        span = slice(starts[k], starts[k] + counts[k])
        photo = Photo(sims[span], ids[span], row["target_face"], own, row["sim_to_centroid"])
        labels, scores = label_photo(photo, rules)
        rows.append({"identity": names[own], "image_id": row["image_id"],
                     "face_identities": [names[i] if i != NO_IDENTITY else None for i in labels],
                     "face_scores": [None if np.isnan(s) else float(s) for s in scores]})
    return rows
