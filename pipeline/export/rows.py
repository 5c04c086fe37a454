"""A shard row as every export format writes it: metadata, image files and the ID embedding.

Boxes and landmarks are in crop pixels (what a trainer sees); the target face is
`crop_faces[target_face]`, its embedding `faces[target_face].embedding` (L2-normalised; the
backend's raw vector is embedding x embedding_norm).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import SHARDS

Row = dict[str, Any]

BATCH_ROWS = 16  # rows decoded at once: a worker holds a few crops, never a whole shard
IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
PROVENANCE = ["source", "url", "page_url", "license", "fetched_at"]
CAPTION = ["caption", "caption_source", "class_word", "class_word_span", "class_word_tokens"]
COPIED = ["identity", "name", "image_id", "dup_group", "sim_to_centroid", "face_backend", "crop_format", "crop_size",
          "crop_box", "person_box", "mask_source", "mask_area", *CAPTION, *PROVENANCE]
COLUMNS = [*COPIED, "target_face", "crop_faces", "faces", "crop_image", "mask"]


def read_rows(run: RunDir, shard: str) -> Iterator[Row]:
    """The rows of `shards/<shard>` in stored order (identities whole and consecutive), a batch at a time."""
    with run.fs.open_input_file(run.path(SHARDS, shard)) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS):
            yield from batch.to_pylist()


def metadata(row: Row) -> dict[str, Any]:
    """JSON-ready per-image metadata; `image_id` is the sha256 of the downloaded image's bytes."""
    record = {key: row[key] for key in COPIED}
    record["fetched_at"] = row["fetched_at"].isoformat() if row["fetched_at"] else None
    target = row["target_face"]
    faces = [{"box": face["box"], "landmarks": points(face["landmarks"])} for face in row["crop_faces"]]
    record.update(target_face=target, faces=faces, bbox=faces[target]["box"], landmarks=faces[target]["landmarks"],
                  embedding_norm=row["faces"][target]["embedding_norm"])
    return record


def points(flat: list[float]) -> list[list[float]]:
    """[x0, y0, x1, y1, ...] -> [[x0, y0], [x1, y1], ...]: the shape InstantID's draw_kps takes."""
    return [list(flat[i : i + 2]) for i in range(0, len(flat), 2)]


def embedding(row: Row) -> np.ndarray:
    return np.asarray(row["faces"][row["target_face"]]["embedding"], dtype=np.float32)


def npy(array: np.ndarray) -> bytes:
    """`.npy` bytes: read back with np.load, which runs no pickled code (allow_pickle is off by default)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def image_ext(row: Row) -> str:
    return IMAGE_EXT[row["crop_format"]]


def sample(row: Row) -> dict[str, str]:
    return {"identity": row["identity"], "image_id": row["image_id"], "dup_group": row["dup_group"]}
