"""The review app on a big run: first page and identity pages answer in under 1 s at 10,000 identities and 1M rows.

    python benchmarks/review_app.py [--identities 10000] [--photos 100] [--root /tmp/review-bench]

A synthetic run in the real schemas (verify's, hygiene's and caption's columns as the stages declare them):
per identity `--photos` rows, one face each with a 128-d embedding, 20% dropped as not_target_identity, 10%
group photos, 5% identities with a competing cluster, 1% flagged possible_same_person, 2% class-word
disagreements. Made once under --root (minutes) and reused. Then, through a real server on 127.0.0.1:
building the queue (first start: one scan of every part), a restart over the cached queue, the queue brought
up to date after `--touched` identities' parts were rewritten (as an apply does), the first page
(cold and warm), a deep page, identity pages of random identities, and a search by sha256; then the same
first page after `--decisions` rejects over half as many identities (the app counts the ones not yet
applied when it starts, then per identity as they change). Exits 1 when a page misses 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `pipeline` importable

from pipeline.core.decisions import LOG, REJECT, Decision, append
from pipeline.core.markers import part_path
from pipeline.core.reasons import NOT_TARGET_IDENTITY
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK, ROW_KEYS, extend
from pipeline.engine.registry import STAGES
from pipeline.review.queue import load_queue
from pipeline.review.serve import review_server

TARGET_SECONDS = 1.0
DIM = 128
DONE = "bench.done"  # written last: a run made to the end


def stage_schema(name: str) -> pa.Schema:
    """A stage's output schema: every stage's declared columns up to it, as the runner chains them."""
    schema = ROW_KEYS
    for stage in STAGES:
        schema = extend(schema, stage.produces)
        if stage.name == name:
            return schema
    raise KeyError(name)


def identity_rows(index: int, photos: int, rng: np.random.Generator) -> dict[str, list]:
    """One identity's verify columns (the rest of the schema null)."""
    slug = f"person_{index:05d}"
    images = [hashlib.sha256(f"{index}/{j}".encode()).hexdigest() for j in range(photos)]
    kept = rng.random(photos) >= 0.2
    sims = np.where(kept, rng.uniform(0.45, 0.95, photos), rng.uniform(-0.1, 0.55, photos))
    groups = rng.random(photos) < 0.1
    embedding = rng.standard_normal(DIM).astype(np.float32).tolist()
    face = {"box": [100.0, 80.0, 400.0, 420.0], "landmarks": [0.0] * 10, "score": 0.9, "embedding": embedding,
            "embedding_norm": 1.0, "sharpness": 300.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "image_share": 0.2}
    competing = index % 20 == 0
    return {
        "identity": [slug] * photos, "image_id": images,
        "status": [OK if k else DROPPED for k in kept], "reason": [None if k else NOT_TARGET_IDENTITY for k in kept],
        "detail": [None if k else f"best face {s:.3f} < 0.5" for k, s in zip(kept, sims, strict=True)],
        "name": [slug] * photos, "raw_path": [f"raw/{slug}/{image}.jpg" for image in images],
        "width": [1000] * photos, "height": [1200] * photos,
        "faces": [[face, face] if g else [face] for g in groups], "target_face": [0] * photos,
        "sim_to_centroid": sims.tolist(),
        "runner_up_sim": [float(s) - 0.2 if g else None for g, s in zip(groups, sims, strict=True)],
        "large_faces": [2 if g else 1 for g in groups],
        "identity_purity": [0.6 if competing else 0.95] * photos, "identity_competing": [competing] * photos,
        "calibration": [{"threshold": 0.5, "cluster_threshold": 0.45, "dup_similarity": 0.9, "min_face_score": 0.8,
                         "copy_paste_max": 0.83}] * photos,
    }


def table_of(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    rows = len(columns["identity"])
    return pa.table({f.name: pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(rows, f.type)
                     for f in schema}, schema=schema)


def make_run(root: Path, identities: int, photos: int) -> RunDir:
    run = RunDir(str(root))
    if run.exists(DONE):
        return run
    rng = np.random.default_rng(0)
    schemas = {name: stage_schema(name) for name in ("verify", "hygiene", "caption")}
    slugs = [f"person_{i:05d}" for i in range(identities)]
    run.write_json("run.json", {"identities": [[slug, slug.replace("_", " ").title()] for slug in slugs],
                                "profile": "synthetic", "stage_hashes": {}})
    started = time.perf_counter()
    for index, slug in enumerate(slugs):
        columns = identity_rows(index, photos, rng)
        pq.write_table(table_of(columns, schemas["verify"]), run.path(part_path("verify", slug)))
        kept = [i for i, status in enumerate(columns["status"]) if status == OK]
        later = {name: [values[i] for i in kept] for name, values in columns.items()}
        same = index % 100 == 1
        later["possible_same_person"] = [[slugs[index - 1]] if same else []] * len(kept)
        later["same_person_similarity"] = [0.7 if same else None] * len(kept)
        pq.write_table(table_of(later, schemas["hygiene"]), run.path(part_path("hygiene", slug)))
        later["class_word"] = ["woman"] * len(kept)
        later["estimated_gender"] = ["male"] * len(kept)
        later["estimated_gender_confidence"] = [0.9] * len(kept)
        later["class_word_disagrees"] = (rng.random(len(kept)) < 0.02).tolist()
        pq.write_table(table_of(later, schemas["caption"]), run.path(part_path("caption", slug)))
        if index % 1000 == 999:
            print(f"  wrote {index + 1:,} identities ({time.perf_counter() - started:.0f} s)", flush=True)
    run.write_bytes(DONE, b"")
    return run


def add_decisions(run: RunDir, count: int, identities: int) -> None:
    """`count` rejects, two a photo's identity, over `count // 2` identities (a fresh log each time)."""
    if run.exists(LOG):
        run.delete(LOG)
    for n in range(count):
        index = (n // 2) * (identities // max(count // 2, 1))
        image = hashlib.sha256(f"{index}/{n % 2}".encode()).hexdigest()
        append(run, Decision(f"person_{index:05d}", REJECT, image, by="benchmark"))


def touch(run: RunDir, count: int) -> None:
    """Rewrite the verify, hygiene and caption parts of `count` identities, as an apply does (same rows)."""
    for index in range(count):
        for stage in ("verify", "hygiene", "caption"):
            path = run.path(part_path(stage, f"person_{index:05d}"))
            pq.write_table(pq.read_table(path), path)


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        assert answer.status == 200 and answer.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--root", type=Path, default=Path("/tmp/review-bench"))
    parser.add_argument("--pages", type=int, default=20, help="identity pages timed")
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--touched", type=int, default=10, help="identities whose parts an apply rewrites")
    args = parser.parse_args()
    root = args.root / f"{args.identities}x{args.photos}"
    for stage in ("verify", "hygiene", "caption"):
        (root / "stages" / stage).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = make_run(root, args.identities, args.photos)
    print(f"synthetic run: {args.identities:,} identities x {args.photos} rows at {root} "
          f"({time.perf_counter() - started:.0f} s to make or find)")

    started = time.perf_counter()
    queue = load_queue(run, rebuild=True)
    build = time.perf_counter() - started
    started = time.perf_counter()
    load_queue(run)
    cached = time.perf_counter() - started
    touch(run, args.touched)
    started = time.perf_counter()
    load_queue(run)
    updated = time.perf_counter() - started
    server, url = review_server(run, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base, token = url.split("/?token=")
    try:
        first_cold = timed_get(url)
        first = [timed_get(url) for _ in range(5)]
        deep = timed_get(f"{base}/?page={queue.pages // 2}&token={token}")
        rng = np.random.default_rng(1)
        slugs = [f"person_{i:05d}" for i in rng.choice(args.identities, args.pages, replace=False)]
        identity = [timed_get(f"{base}/identity/{slug}?token={token}") for slug in slugs]
        image = hashlib.sha256(f"{args.identities // 2}/7".encode()).hexdigest()
        search = timed_get(f"{base}/search?q={image}&token={token}")
    finally:
        server.shutdown()
    add_decisions(run, args.decisions, args.identities)
    started = time.perf_counter()
    server, url = review_server(run, "127.0.0.1", 0)
    startup = time.perf_counter() - started
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        decided = [timed_get(url) for _ in range(3)]
    finally:
        server.shutdown()
    print(f"queue: {queue.items:,} items, built in {build:.1f} s (first start), {cached * 1000:.0f} ms from the cache, "
          f"{updated:.1f} s to update after {args.touched} identities' parts changed")
    print(f"first page: {first_cold:.3f} s cold, median {statistics.median(first):.3f} s (target < {TARGET_SECONDS} s)")
    print(f"page {queue.pages // 2:,} of {queue.pages:,}: {deep:.3f} s")
    print(f"identity page ({args.photos} photos): median {statistics.median(identity):.3f} s, "
          f"max {max(identity):.3f} s over {len(identity)} (target < {TARGET_SECONDS} s)")
    print(f"search by sha256: {search:.3f} s")
    print(f"with {args.decisions:,} decisions over {args.decisions // 2:,} identities: start {startup:.1f} s "
          f"(queue from the cache, pending counted), first page max {max(decided):.3f} s")
    if max(first_cold, *first, *identity, *decided) >= TARGET_SECONDS:
        sys.exit(1)


if __name__ == "__main__":
    main()
