"""The run's stage parts as the review app reads them: column-pruned, one identity at a time or all at once.

A part file is complete when it exists (parts are renamed into place), so the app lists the parts there are
rather than loading every marker: at 10,000 identities that listing is one directory read per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipeline.core.markers import part_path
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK

VERIFY, HYGIENE, CAPTION = "verify", "hygiene", "caption"
AFTER_VERIFY = ("hygiene", "safety_scores", "safety", "crop", "segment", "caption")  # where a kept row may still drop
PREFIX, SUFFIX = "part-", ".parquet"
FACE_BOXES = "faces.list.element.box"  # only the boxes of `faces` (its embeddings are most of a part's bytes)
PHOTO_COLUMNS = ["image_id", "status", "reason", "detail", "sim_to_centroid", "target_face", FACE_BOXES, "width",
                 "height", "raw_path", "large_faces", "runner_up_sim", "calibration", "decided_by"]
OUTCOME_COLUMNS = ["image_id", "status", "reason", "detail"]


@dataclass(frozen=True)
class Parts:
    """The part files of one stage: task -> path, and task -> its size and time (a rewritten part differs)."""

    stage: str
    files: dict[str, str]
    stamps: dict[str, str]


def list_parts(run: RunDir, stage: str) -> Parts:
    selector = pafs.FileSelector(run.path(f"stages/{stage}"), allow_not_found=True)
    files, stamps = {}, {}
    for info in run.fs.get_file_info(selector):
        name = info.base_name
        if info.type == pafs.FileType.File and name.startswith(PREFIX) and name.endswith(SUFFIX):
            task = name[len(PREFIX) : -len(SUFFIX)]
            files[task], stamps[task] = info.path, f"{info.size}:{info.mtime_ns}"
    return Parts(stage, files, stamps)


def scan(run: RunDir, parts: Parts, columns: list[str], tasks: set[str] | None = None) -> pa.Table:
    """These columns of every part of a stage (or of these tasks'), in one multi-threaded scan: only these column
    chunks are read."""
    paths = sorted(path for task, path in parts.files.items() if tasks is None or task in tasks)
    if not paths:
        return pa.table({})  # no columns: the readers see nothing to rank
    dataset = ds.dataset(paths, format="parquet", filesystem=run.fs)
    present = [name for name in columns if name in dataset.schema.names]
    return dataset.to_table(columns=present)


def read_columns(run: RunDir, stage: str, task: str, columns: list[str]) -> pa.Table | None:
    """These columns of one identity's part (nested ones by path, as FACE_BOXES), None when the stage has no part
    for it. On an object store the part is one GET, as RunDir reads parts."""
    rel = part_path(stage, task)
    if not run.exists(rel):
        return None
    source = pa.BufferReader(run.read_bytes(rel)) if run.object_store else run.fs.open_input_file(run.path(rel))
    with source:
        part = pq.ParquetFile(source)
        present = set(part.schema_arrow.names)  # a part written before a column existed lacks it
        return part.read(columns=[name for name in columns if name.split(".")[0] in present])


def verify_photos(run: RunDir, slug: str, images: set[str]) -> dict[str, dict]:
    """Verify's rows of these photos of one identity (faces, size, detail): what a queue item shows."""
    table = read_columns(run, VERIFY, slug, ["image_id", "detail", FACE_BOXES, "width", "height", "target_face",
                                             "sim_to_centroid"])
    rows = table.to_pylist() if table is not None else []
    return {row["image_id"]: row for row in rows if row["image_id"] in images}


def identity_photos(run: RunDir, slug: str) -> list[dict]:
    """Every photo verify judged for this identity, with its final outcome: the status, reason and detail of
    the last stage that holds the row (a photo verify kept may drop later, in hygiene or safety)."""
    table = read_columns(run, VERIFY, slug, PHOTO_COLUMNS)
    if table is None:
        return []
    photos = {row["image_id"]: {**row, "verify_status": row["status"], "stage": VERIFY} for row in table.to_pylist()}
    for stage in AFTER_VERIFY:
        later = read_columns(run, stage, slug, OUTCOME_COLUMNS)
        for row in later.to_pylist() if later is not None else []:
            if row["image_id"] in photos:
                photos[row["image_id"]].update({**row, "stage": stage})
    _add_caption(run, slug, photos)
    return sorted(photos.values(), key=_photo_order)


def class_word_of(run: RunDir, slug: str) -> str | None:
    """The identity's class word, as caption wrote it on its kept rows (one word an identity)."""
    table = read_columns(run, CAPTION, slug, ["status", "class_word"])
    words = [row["class_word"] for row in (table.to_pylist() if table is not None else [])
             if row["status"] == OK and row["class_word"]]
    return words[0] if words else None


def _add_caption(run: RunDir, slug: str, photos: dict[str, dict]) -> None:
    table = read_columns(run, CAPTION, slug, ["image_id", "class_word", "estimated_gender", "class_word_disagrees"])
    for row in table.to_pylist() if table is not None else []:
        if row["image_id"] in photos:
            photos[row["image_id"]].update(row)


def _photo_order(photo: dict) -> tuple:
    """Kept first, each group by similarity, lowest first (the doubtful ones on top)."""
    sim = photo["sim_to_centroid"]
    return photo["status"] != OK, sim if sim is not None else 2.0
