"""JSONL export: one line per image, with the crop, mask and ID embedding as files beside it.

Layout under the destination (paths in a line are relative to the JSONL file's folder):

    train.jsonl                          every shard's lines, in shard order: give this to a trainer
    train-<k>-of-<n>.jsonl               one source shard's lines
    train-<k>-of-<n>/<identity>/<image_id>.jpg | .png | .webp, .mask.png, .npy

Each line holds pipeline.export.rows.metadata (identity, caption, class word with span and CLIP
token positions, `bbox` [x0, y0, x1, y1] and `landmarks` [[x, y] x 5] of the target face in crop
pixels, every face, provenance) plus the paths, under the names two community trainers read:

- InstantID training (MFaceTech/InstantID and ifenghao/InstantID, train_instantId_sdxl.py, which
  reads JSONL line by line, paths joined to --data_root_path): `file_name` (image),
  `additional_feature` (caption), `bbox`, `landmarks`, `insightface_feature_file` (embedding).
- IP-Adapter-FaceID (tencent-ailab/IP-Adapter, tutorial_train_faceid.py): `image_file`, `text`,
  `id_embed_file`. That script json.load()s one JSON array (read the lines instead) and opens
  `id_embed_file` without --data_root_path (run it from the export folder).

Both trainers load the embedding with torch.load; ours are `.npy` (np.load: no pickle, so no
code runs; torch >= 2.6 refuses pickled numpy arrays by default anyway), so their loader line
becomes `torch.from_numpy(np.load(path))`. The vector is L2-normalised, as insightface's
`normed_embedding` that IP-Adapter-FaceID uses; x `embedding_norm` gives the raw vector InstantID
feeds. Both expect 512-d ArcFace (face.backend=insightface). Also written: `mask_file` (1-bit PNG).
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.fs as pafs

from pipeline.core.rundir import RunDir
from pipeline.export import rows
from pipeline.export.format import Format, Sample, stem

COMBINED = "train.jsonl"


def outputs(shard_stem: str) -> list[str]:
    return [f"{shard_stem}.jsonl", f"{shard_stem}/"]


def write_shard(run: RunDir, dest: RunDir, shard: str) -> list[Sample]:
    """Files first, then the shard's JSONL (a temporary name until complete), then files no line names."""
    samples, written, lines_file = [], set(), outputs(stem(shard))[0]
    with dest.open_atomic(lines_file) as stream:
        for row in rows.read_rows(run, shard):
            line = _write_files(dest, stem(shard), row)
            written.update(line[key] for key in ("image_file", "mask_file", "id_embed_file"))
            stream.write((json.dumps(line) + "\n").encode())
            samples.append(rows.sample(row))
    _remove_unlisted(dest, stem(shard), written)
    return samples


def _write_files(dest: RunDir, folder: str, row: rows.Row) -> dict:
    base = f"{folder}/{row['identity']}/{row['image_id']}"
    image, mask, embedding = f"{base}.{rows.image_ext(row)}", f"{base}.mask.png", f"{base}.npy"
    dest.write_bytes(image, row["crop_image"])
    dest.write_bytes(mask, row["mask"])
    dest.write_bytes(embedding, rows.npy(rows.embedding(row)))
    record = rows.metadata(row)
    return {**record, "image_file": image, "file_name": image, "mask_file": mask, "id_embed_file": embedding,
            "insightface_feature_file": embedding, "text": record["caption"], "additional_feature": record["caption"]}


def _remove_unlisted(dest: RunDir, folder: str, listed: set[str]) -> None:
    """Rows gone from a rewritten shard leave files its new JSONL no longer names."""
    selector = pafs.FileSelector(dest.path(folder), allow_not_found=True, recursive=True)
    for info in dest.fs.get_file_info(selector):
        if info.is_file and posixpath.relpath(info.path, dest.root) not in listed:
            dest.fs.delete_file(info.path)


def finish(dest: RunDir, markers: list[dict]) -> None:
    """train.jsonl: the shards' lines concatenated in shard order, one shard in memory at a time."""
    with dest.open_atomic(COMBINED) as stream:
        for marker in markers:
            stream.write(dest.read_bytes(outputs(stem(marker["shard"]))[0]))


FORMAT = Format("jsonl", layout=1, outputs=outputs, write_shard=write_shard, finish=finish)
