"""WebDataset export: one tar per source shard, plus index.json (identity -> tar and sample keys).

A sample is an image of one identity, key `<identity>/<image_id>` (slugs and sha256s hold no dot,
which WebDataset would read as the start of the extension), with these members:

    <key>.jpg | .png | .webp   the crop, bytes as stored in the shards
    <key>.mask.png             the person mask (1-bit PNG, crop size, white = the person)
    <key>.json                 identity and per-image metadata (pipeline.export.rows.metadata) + `embedding`
    <key>.npy                  the ID embedding, float32 (L2-normalised; x embedding_norm = the raw vector)

An identity's samples are consecutive in one tar, so a streaming trainer can draw references
from the same identity with a small buffer; index.json says which tar holds whom, with each
sample's `dup_group` (references should come from another group than the target).
Tars are written with Python's tarfile (the webdataset package is only needed to read them):
members are bytes already, so webdataset's TarWriter would add nothing but a dependency.
"""

from __future__ import annotations

import io
import json
import tarfile

from pipeline.core.rundir import RunDir
from pipeline.export import rows
from pipeline.export.format import Format, Sample, stem

INDEX = "index.json"


def outputs(shard_stem: str) -> list[str]:
    return [f"{shard_stem}.tar"]


def write_shard(run: RunDir, dest: RunDir, shard: str) -> list[Sample]:
    """Stream the shard's rows into its tar (a temporary name until complete)."""
    samples = []
    with dest.open_atomic(outputs(stem(shard))[0]) as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
        for row in rows.read_rows(run, shard):
            key, vector = f"{row['identity']}/{row['image_id']}", rows.embedding(row)
            record = {**rows.metadata(row), "embedding": vector.tolist()}
            _add(tar, f"{key}.{rows.image_ext(row)}", row["crop_image"])
            _add(tar, f"{key}.mask.png", row["mask"])
            _add(tar, f"{key}.json", json.dumps(record).encode())
            _add(tar, f"{key}.npy", rows.npy(vector))
            samples.append(rows.sample(row))
    return samples


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed owner, mode and time, so the same rows always give the same tar bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def finish(dest: RunDir, markers: list[dict]) -> None:
    """index.json: the tars in shard order, and per identity its tar, sample keys and duplicate groups."""
    tars, identities = [], {}
    for marker in markers:
        tar = outputs(stem(marker["shard"]))[0]
        tars.append({"tar": tar, "source": marker["shard"], "samples": len(marker["samples"])})
        for sample in marker["samples"]:
            entry = identities.setdefault(sample["identity"], {"tar": tar, "keys": [], "dup_groups": []})
            entry["keys"].append(f"{sample['identity']}/{sample['image_id']}")
            entry["dup_groups"].append(sample["dup_group"])
    dest.write_json(INDEX, {"format": "webdataset", "tars": tars, "identities": identities})


FORMAT = Format("webdataset", layout=1, outputs=outputs, write_shard=write_shard, finish=finish)
