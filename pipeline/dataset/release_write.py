"""One source shard into a release, streamed a batch at a time: `shards/<stem>.parquet` (the shards' own layout,
so the pipeline's readers, `datasets` and DuckDB read a release as they read a run), or `webdataset/<stem>.tar`.

A shard's writer returns its identities (keys) with their rows and withheld rows, never its rows: what the
index and the card are made from, so the driver's memory grows with identities, not images.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.removals import load_ledger
from pipeline.core.rundir import RunDir
from pipeline.dataset.release_keys import IdentityKeys, release_secret
from pipeline.dataset.release_rows import ReleaseOptions, released_tables

FORMATS = ("parquet", "webdataset")
IMAGE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
Tables = Iterator[tuple[pa.Table, pa.Array]]


def outputs(fmt: str, shard_stem: str) -> list[str]:
    return [f"shards/{shard_stem}.parquet"] if fmt == "parquet" else [f"webdataset/{shard_stem}.tar"]


def write_release_shard(run: RunDir, dest: RunDir, shard: str, fmt: str, options: ReleaseOptions) -> list[dict]:
    """`shards/<shard>` released into `dest` (a temporary name until complete); its identities' counts."""
    keys = IdentityKeys(release_secret(run))
    tables = released_tables(run, shard, load_ledger(run), keys, options)
    counts: dict[str, dict] = {}
    with dest.open_atomic(outputs(fmt, shard.removesuffix(".parquet"))[0]) as stream:
        write = _write_parquet if fmt == "parquet" else _write_tar
        write(stream, _counted(tables, counts))
    return list(counts.values())


def _counted(tables: Tables, counts: dict[str, dict]) -> Iterator[pa.Table]:
    """The released tables, each identity's rows and withheld rows counted on the way (in stored order)."""
    for table, withheld in tables:
        for key in [*withheld.to_pylist(), *table["identity"].to_pylist()]:
            counts.setdefault(key, {"identity": key, "num_rows": 0, "withheld": 0})
        for key in withheld.to_pylist():
            counts[key]["withheld"] += 1
        for key in table["identity"].to_pylist():
            counts[key]["num_rows"] += 1
        yield table


def _write_parquet(stream: pa.NativeFile, tables: Iterator[pa.Table]) -> None:
    writer = None
    for table in tables:
        if writer is None:
            writer = pq.ParquetWriter(stream, table.schema, compression="zstd")
        writer.write_table(table.cast(writer.schema))
    if writer is not None:
        writer.close()


def _write_tar(stream: pa.NativeFile, tables: Iterator[pa.Table]) -> None:
    """A sample per row, key `<identity key>/<image_id>`: the crop, `.mask.png` and `.json` (every other column)."""
    with tarfile.open(fileobj=stream, mode="w|") as tar:
        for table in tables:
            for row in table.to_pylist():
                key = f"{row['identity']}/{row['image_id']}"
                image, mask = row.pop("crop_image"), row.pop("mask")
                row["fetched_at"] = row["fetched_at"].isoformat() if row.get("fetched_at") else None
                _add(tar, f"{key}.{IMAGE_EXT.get(row.get('crop_format'), 'img')}", image)
                _add(tar, f"{key}.mask.png", mask)
                _add(tar, f"{key}.json", json.dumps(row).encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed owner, mode and time: the same rows give the same tar, and no local user name."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
