"""The pair index's cost per shard: bytes per stored pair on disk, and the seconds a shard's task spends on it.

    python benchmarks/pair_index.py [--rows 2000] [--per-target 64]

Synthetic shards of `shard.max_rows` rows in the shards' schema (the columns the index reads): 128-d target
faces (SFace's size) at cosine ~0.7 to their identity's centroid, yaw and pitch, a phash, a page shared by a
few photos, sha256 image_ids, and the calibration verify records. Two layouts: identities of 100 photos (20 a
shard), and one identity of `--rows` photos (the cap and the blocked n x n work bite). Each is written through
`PairIndexWriter` to a local file, as the shard step writes it, then read back with pyarrow.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset.pair_index import PairIndexWriter, PairRules

DIM = 128
COPY_PASTE_MAX = 0.835  # sface's calibration


def identity_rows(rng: np.random.Generator, identity: int, photos: int) -> pa.Table:
    """One identity's rows with the columns the pair index reads."""
    centroid = rng.standard_normal(DIM)
    centroid /= np.linalg.norm(centroid)
    noise = rng.standard_normal((photos, DIM))
    noise -= (noise @ centroid)[:, None] * centroid  # orthogonal to the centroid: cosine to it is exactly 0.85
    vectors = 0.85 * centroid + np.sqrt(1 - 0.85**2) * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    ids = [hashlib.sha256(f"{identity}/{k}".encode()).hexdigest() for k in range(photos)]
    faces = [[{"embedding": vector.astype(np.float32).tolist(), "yaw": float(yaw), "pitch": float(pitch)}]
             for vector, yaw, pitch in zip(vectors, rng.normal(0, 20, photos), rng.normal(0, 10, photos), strict=True)]
    return pa.table({
        "identity": [f"identity_{identity}"] * photos, "image_id": ids, "dup_group": ids, "faces": faces,
        "target_face": [0] * photos, "page_url": [f"https://example.com/{identity}/{k // 4}" for k in range(photos)],
        "phash": [f"{value:016x}" for value in rng.integers(0, 2**63, photos)],
        "calibration": [{"copy_paste_max": COPY_PASTE_MAX}] * photos,
    })


def measure(label: str, tables: list[pa.Table], per_target: int) -> dict:
    sink = io.BytesIO()
    stream = pa.PythonFile(sink, mode="w")
    start = time.perf_counter()
    writer = PairIndexWriter(stream, PairRules(None, per_target))
    for table in tables:
        writer.add(table["identity"][0].as_py(), table)
    writer.close()
    seconds = time.perf_counter() - start
    data = sink.getvalue()
    start = time.perf_counter()
    pairs = pq.read_table(pa.BufferReader(data))
    read = time.perf_counter() - start
    rows = sum(table.num_rows for table in tables)
    return {"layout": label, "rows": rows, "pairs": pairs.num_rows, "bytes": len(data),
            "bytes_per_pair": len(data) / max(pairs.num_rows, 1), "write_s": seconds, "read_s": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows per shard (shard.max_rows)")
    parser.add_argument("--per-target", type=int, default=64, help="shard.pairs_per_target")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layouts = {"100 photos an identity": [identity_rows(rng, k, 100) for k in range(args.rows // 100)],
               f"one identity of {args.rows}": [identity_rows(rng, 0, args.rows)]}
    print("| layout | rows | pairs | bytes | bytes/pair | write s | read s |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, tables in layouts.items():
        found = measure(label, tables, args.per_target)
        print(f"| {label} | {found['rows']:,} | {found['pairs']:,} | {found['bytes']:,} | "
              f"{found['bytes_per_pair']:.1f} | {found['write_s']:.2f} | {found['read_s']:.3f} |")


if __name__ == "__main__":
    main()
