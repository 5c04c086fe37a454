"""A face takedown over a large dataset, on synthetic embeddings:

    python benchmarks/face_takedown.py [--identities 100000] [--faces 2000000] [--backend sface|insightface]
                                       [--shards 200] [--dir DIR]

Writes `--shards` shards of `--identities` identities whose rows hold two faces each (the target and
one other, `--faces` in all: random unit vectors of the backend's size: SFace's 128-d by default, as the
CPU profiles store them, or ArcFace's 512-d), each row with a small real JPEG crop and PNG mask.
Planted for one requester: their own identity's photos (target cosine 0.55-0.9 to the request), a
re-encoded copy under another identity (0.97, as target) and group photos in other identities where
they stand beside the target (0.5-0.8).
The cut is the backend's verify threshold less the 0.05 margin (insightface 0.35, sface 0.45); random
512-d vectors are at most ~0.25 alike and 128-d ones ~0.45 at 2M (a stranger may pass: reported), so the
matches should be exactly the planted ones.

Then, with the pipeline's own code: the matching over every shard (`face_match.match_tables`, the
figure the issue names: under 1 minute on 2 cores), the shards holding a match (`holding`) and their
rewrite (`rewrite_shard`: targets taken down, bystanders blurred); every other shard must be left
byte for byte.
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `pipeline` importable

from pipeline.core.removals import Ledger, new_removal
from pipeline.core.rundir import RunDir
from pipeline.dataset.face_match import COLUMNS, match_tables
from pipeline.dataset.shards import SHARDS
from pipeline.dataset.takedown_shards import holding, rewrite_shard
from stages.faces import FACES

MARGIN = 0.05  # governance.face_match_margin
FACE = pa.struct([pa.field("box", pa.list_(pa.float32(), 4)), pa.field("embedding", pa.list_(pa.float32()))])
BOXES = np.array([[40, 30, 100, 110], [130, 40, 180, 100]], np.float32)  # target, other: in crop pixels too


def small_images() -> tuple[bytes, bytes]:
    crop, mask = io.BytesIO(), io.BytesIO()
    Image.linear_gradient("L").resize((224, 224)).convert("RGB").save(crop, "JPEG", quality=90)
    Image.new("1", (224, 224), 1).save(mask, "PNG")
    return crop.getvalue(), mask.getvalue()


def unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(query: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    noise = unit(rng, 1, len(query))[0]
    noise -= (noise @ query) * query
    return cosine * query + np.sqrt(1 - cosine**2) * noise / np.linalg.norm(noise)


def shard_table(first: int, identities: int, photos: int, embeddings: np.ndarray,
                images: tuple[bytes, bytes]) -> pa.Table:
    rows = identities * photos
    ids = np.repeat(np.arange(first, first + identities), photos)
    faces = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
        pa.StructArray.from_arrays(
            [pa.FixedSizeListArray.from_arrays(pa.array(np.tile(BOXES, (rows, 1)).ravel()), 4),
             pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows * embeddings.shape[1] + 1, embeddings.shape[1],
                                                         dtype=np.int32)), pa.array(embeddings.ravel()))],
            fields=list(FACE)),
    )
    crop_faces = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
        pa.StructArray.from_arrays([pa.FixedSizeListArray.from_arrays(pa.array(np.tile(BOXES, (rows, 1)).ravel()), 4)],
                                   names=["box"]))
    return pa.table({
        "identity": [f"person_{i:06d}" for i in ids], "image_id": [f"{i:06d}-{k:03d}".ljust(64, "0") for i, k in
                                                                   zip(ids, np.tile(np.arange(photos), identities))],
        "source": ["urls"] * rows, "url": pa.nulls(rows, pa.string()), "page_url": pa.nulls(rows, pa.string()),
        "license": ["CC-BY-4.0"] * rows,
        "faces": faces, "target_face": pa.array(np.zeros(rows, np.int32)),
        "crop_image": pa.array([images[0]] * rows, pa.binary()), "crop_format": ["JPEG"] * rows,
        "crop_faces": crop_faces, "mask": pa.array([images[1]] * rows, pa.binary()),
        "blurred_faces": pa.nulls(rows, pa.list_(pa.int32())),
    })  # fmt: skip


def build(run: RunDir, args: argparse.Namespace, query: np.ndarray, rng: np.random.Generator) -> dict:
    """The shards, with the planted matches; returns what the takedown must find."""
    photos = args.faces // (2 * args.identities)
    per_shard = args.identities // args.shards
    images = small_images()
    plan = {"targets": set(), "bystanders": {}, "shards": set()}
    planted = {0: ("own", 0), per_shard * (args.shards // 3): ("copy", 3),  # identity index -> (kind, photo)
               **{per_shard * s + 7: ("group", 1) for s in (args.shards // 2, args.shards - 1)}}
    for shard in range(args.shards):
        first = shard * per_shard
        embeddings = unit(rng, per_shard * photos * 2, args.dim)
        for identity, (kind, photo) in planted.items():
            if first <= identity < first + per_shard:
                row = (identity - first) * photos + photo
                key = (f"person_{identity:06d}", f"{identity:06d}-{photo:03d}".ljust(64, "0"))
                if kind == "own":
                    for k in range(photos):
                        embeddings[2 * (row + k)] = near(query, rng.uniform(0.55, 0.9), rng)
                        plan["targets"].add((key[0], f"{identity:06d}-{k:03d}".ljust(64, "0")))
                elif kind == "copy":
                    embeddings[2 * row] = near(query, 0.97, rng)
                    plan["targets"].add(key)
                else:
                    embeddings[2 * row + 1] = near(query, rng.uniform(0.5, 0.8), rng)
                    plan["bystanders"][key] = {1}
                plan["shards"].add(f"train-{shard:05d}-of-{args.shards:05d}.parquet")
        table = shard_table(first, per_shard, photos, embeddings, images)
        pq.write_table(table, run.path(SHARDS, f"train-{shard:05d}-of-{args.shards:05d}.parquet"),
                       row_group_size=1000, compression="zstd")
    return plan


DIMENSIONS = {"sface": 128, "insightface": 512}  # insightface's size comes from its loaded model: ArcFace's 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--faces", type=int, default=2_000_000)
    parser.add_argument("--backend", choices=["sface", "insightface"], default="sface")
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="where to write the shards (default: a temporary folder, removed)")
    args = parser.parse_args()
    backend = FACES.get(args.backend)
    args.dim, cut = DIMENSIONS[args.backend], backend.calibration.threshold - MARGIN
    rng = np.random.default_rng(0)
    root = args.dir or Path(tempfile.mkdtemp(prefix="face-takedown-"))
    (root / SHARDS).mkdir(parents=True, exist_ok=True)
    run = RunDir(str(root))
    query = unit(rng, 1, args.dim)
    try:
        started = time.perf_counter()
        plan = build(run, args, query[0], rng)
        size = sum(path.stat().st_size for path in (root / SHARDS).glob("*.parquet")) / 2**30
        print(f"built {args.shards} shards, {args.identities:,} identities, {args.faces:,} faces x {args.dim}-d "
              f"({size:.1f} GiB) in {time.perf_counter() - started:.0f} s")

        started, cpu = time.perf_counter(), time.process_time()
        names = sorted(path.name for path in (root / SHARDS).glob("train-*.parquet"))
        found = match_tables((run.read_table(f"{SHARDS}/{name}", COLUMNS) for name in names), query, cut)
        matching, cpu = time.perf_counter() - started, time.process_time() - cpu
        exact = found.targets == plan["targets"] and found.bystanders == plan["bystanders"]
        print(f"matching: {matching:.1f} s ({cpu:.1f} CPU s; reading the shards included) over {args.faces:,} faces "
              f"(target < 60 s); {len(found.targets)} target rows, {len(found.bystanders)} bystander rows; exactly the "
              f"planted: {exact}")

        removal = new_removal("face", "benchmark", None, "benchmark",
                              rows=tuple(f"{i}/{m}" for i, m in sorted(found.targets)),
                              blurred=tuple(f"{i}/{m}/{f}" for (i, m), fs in found.bystanders.items() for f in fs))
        ledger = Ledger([removal])
        before = {name: (root / SHARDS / name).stat().st_mtime_ns for name in names}
        started = time.perf_counter()
        matched = holding(run, ledger)
        for name in matched:
            rewrite_shard(run, name, ledger, 1000)
        rewriting = time.perf_counter() - started
        touched = {name for name in names if (root / SHARDS / name).stat().st_mtime_ns != before[name]}
        only = touched == set(matched) == plan["shards"]
        print(f"rewrite: {len(matched)} of {len(names)} shards in {rewriting:.1f} s (finding them included); "
              f"only the matched shards rewritten: {only}")
        print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
        if not exact or not only or matching >= 60:
            sys.exit(1)
    finally:
        if args.dir is None:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
