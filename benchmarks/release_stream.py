"""`release` streams: its memory is flat in the dataset's size, and no shard is held in memory.

Synthetic shards in the real schema (pipeline/core/schema.py: every released column, and the working
copy's name, raw_path and consent besides), 20 rows an identity, 50,000 rows a shard, a small real JPEG
crop (with EXIF) and PNG mask per row, one 128-d face each. A release of N rows and one of 10·N rows each
run in a process of their own (`make_release`, Ray started locally, as the CLI runs it); the peak RSS of
that process and all its descendants (driver, raylet, Ray workers) is sampled every 0.2 s. Also reported:
the driver's own peak, the largest shard's size on disk (what a copy of a shard in memory would add), and
rows per second.

`python -m benchmarks.release_stream [--n 100000]` writes benchmarks/results/release_stream.json.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.common import REPO, Figure, TreeMemory

RESULTS = REPO / "benchmarks" / "results" / "release_stream.json"
ROWS_PER_IDENTITY = 20
ROWS_PER_SHARD = 50_000
ROW_GROUP = 1_000
TARGET_RATIO = 1.3


def tiny_images() -> tuple[bytes, bytes]:
    """A 64 px JPEG crop carrying EXIF (so stripping has work to do) and a 1-bit PNG mask."""
    crop, mask = io.BytesIO(), io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"
    Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(crop, "JPEG", exif=exif)
    Image.new("1", (64, 64), 1).save(mask, "PNG")
    return crop.getvalue(), mask.getvalue()


def shard_table(start: int, rows: int, crop: bytes, mask: bytes) -> pa.Table:
    from pipeline.core.schema import CALIBRATION, FACE

    index = np.arange(start, start + rows)
    identity = [f"person_{i // ROWS_PER_IDENTITY:08d}" for i in index]
    image_id = [f"{i:064x}" for i in index]
    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((rows, 128)).astype(np.float32)
    face = [{"box": [10.0, 10.0, 50.0, 50.0], "landmarks": [20.0] * 10, "score": 0.9, "embedding": v.tolist(),
             "embedding_norm": 1.0, "sharpness": 100.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "image_share": 0.2}
            for v in vectors]
    return pa.table({
        "identity": identity, "name": [f"Person {i // ROWS_PER_IDENTITY}" for i in index], "image_id": image_id,
        "dup_group": image_id, "sim_to_centroid": pa.array(np.full(rows, 0.8, np.float32)),
        "face_backend": ["sface"] * rows, "target_face": pa.array(np.zeros(rows, np.int32)),
        "faces": pa.array([[f] for f in face], pa.list_(FACE)),
        "calibration": pa.array([{"threshold": 0.5}] * rows, CALIBRATION),
        "crop_image": pa.array([crop] * rows, pa.binary()), "crop_format": ["JPEG"] * rows,
        "crop_size": pa.array(np.full(rows, 64, np.int32)), "mask": pa.array([mask] * rows, pa.binary()),
        "caption": ["a photo of a woman"] * rows, "class_word": ["woman"] * rows,
        "source": ["bing"] * rows, "url": [f"https://example.org/{i}.jpg" for i in index],
        "page_url": [f"file:///home/builder/photos/{i}.jpg" for i in index],
        "license": ["cc-by"] * rows, "raw_path": [f"raw/{i}.jpg" for i in index], "consent": ["{}"] * rows,
    })


def build_run(root: Path, rows: int) -> Path:
    """`root/run/shards/`: the shards and their index, written a row group at a time."""
    from pipeline.dataset.shards import INDEX_SCHEMA

    shards_dir = root / "run" / "shards"
    shards_dir.mkdir(parents=True)
    crop, mask = tiny_images()
    count = -(-rows // ROWS_PER_SHARD)
    index = []
    for k in range(count):
        name = f"train-{k:05d}-of-{count:05d}.parquet"
        first, last = k * ROWS_PER_SHARD, min(rows, (k + 1) * ROWS_PER_SHARD)
        with pq.ParquetWriter(shards_dir / name, shard_table(0, 1, crop, mask).schema, compression="zstd") as writer:
            for start in range(first, last, ROW_GROUP):
                writer.write_table(shard_table(start, min(ROW_GROUP, last - start), crop, mask))
        for person in range(first // ROWS_PER_IDENTITY, -(-last // ROWS_PER_IDENTITY)):
            index.append({"identity": f"person_{person:08d}", "shard": name,
                          "row_start": person * ROWS_PER_IDENTITY - first, "num_rows": ROWS_PER_IDENTITY})
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), shards_dir / "_index.parquet")
    return root / "run"


def child(run: Path, dest: Path) -> None:
    """One release in this process (the parent samples this process tree's memory)."""
    from pipeline.core.config import PipelineConfig
    from pipeline.core.rundir import RunDir
    from pipeline.release import ReleaseRequest, make_release

    started = time.perf_counter()
    done = make_release(RunDir(str(run)), RunDir(str(dest)), PipelineConfig(), [], ReleaseRequest())
    print(json.dumps({"seconds": time.perf_counter() - started, "images": done.images,
                      "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(root: Path, rows: int) -> dict:
    run = build_run(root / str(rows), rows)
    dest = root / str(rows) / "release"
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.release_stream", "--child", str(run), str(dest)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    memory.start()
    try:
        stdout, stderr = process.communicate(timeout=3600)
    finally:
        memory.stop()
    if process.returncode:
        raise SystemExit(stderr[-3000:])
    result = json.loads(stdout.strip().splitlines()[-1])
    largest = max(path.stat().st_size for path in (run / "shards").glob("train-*.parquet"))
    result.update(rows=rows, tree_peak_mib=memory.peak / 2**20, largest_shard_mib=largest / 2**20,
                  rows_per_second=rows / result["seconds"])
    shutil.rmtree(root / str(rows))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows of the small release (the large one: 10x)")
    parser.add_argument("--child", nargs=2, metavar=("RUN", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]))
    with tempfile.TemporaryDirectory(prefix="release-stream-") as tmp:
        small, large = measure(Path(tmp), args.n), measure(Path(tmp), 10 * args.n)
    figure = Figure("release memory: 10N / N", large["tree_peak_mib"] / small["tree_peak_mib"], TARGET_RATIO, "<=",
                    context={"N": small, "10N": large})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figure.as_dict(), indent=1))
    print(json.dumps(figure.as_dict(), indent=1))


if __name__ == "__main__":
    main()
