"""The hygiene step's searches at 100k identities, on synthetic data:

    python benchmarks/hygiene_scale.py [--identities 100000] [--dim 512] [--pairs 50] [--photos 50]

1. Pair search: random unit centroids (float16, as the census stores them) with `--pairs` planted close pairs
   (cosine 0.6-0.95), searched at cosine 0.5 by `close_pairs` (blocked matrix products). Random 512-d vectors
   are at most ~0.3 alike, so the search must return exactly the planted pairs.
2. Shared photos: `--photos` image keys per identity (uint64), a few planted in two identities, found by
   `shared_keys` (one sort).

Prints seconds and the peak memory the search allocated (tracemalloc sees numpy's buffers), and the
process's peak RSS (inputs included).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `stages` importable

from stages.cross_identity import BLOCK, close_pairs, shared_keys

CUT = 0.5


def planted_centroids(count: int, dim: int, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, set]:
    """Unit rows in float16; row 2k+1 of the first `pairs` couples is made close to row 2k."""
    centroids = np.empty((count, dim), np.float16)
    for start in range(0, count, BLOCK):  # generated in blocks: float64 randoms of 100k x 512 would be 400 MB
        block = rng.standard_normal((min(BLOCK, count - start), dim)).astype(np.float32)
        centroids[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows = rng.permutation(count)[: 2 * pairs].reshape(pairs, 2)
    for (a, b), cosine in zip(rows, rng.uniform(0.6, 0.95, pairs), strict=True):
        base = centroids[a].astype(np.float32)
        noise = rng.standard_normal(dim).astype(np.float32)
        noise -= (noise @ base) * base
        noise /= np.linalg.norm(noise)
        centroids[b] = cosine * base + np.sqrt(1 - cosine**2) * noise
    return centroids, {(min(a, b), max(a, b)) for a, b in rows.tolist()}


def measured(function, *args) -> tuple[object, float, float]:
    """The result, seconds and peak MiB that `function` allocated."""
    tracemalloc.start()
    started = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--photos", type=int, default=50, help="kept photos per identity, for the shared-photo search")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    centroids, planted = planted_centroids(args.identities, args.dim, args.pairs, rng)
    (i, j, _), seconds, peak = measured(close_pairs, centroids, np.arange(args.identities), CUT)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    print(f"pair search: {args.identities:,} centroids x {args.dim}-d (float16, {centroids.nbytes / 2**20:.0f} MiB), "
          f"cut {CUT}: {seconds:.1f} s, peak {peak:.0f} MiB allocated; {len(found)} pairs found, "
          f"{len(planted)} planted, exact: {found == planted}")

    owners = np.repeat(np.arange(args.identities, dtype=np.int32), args.photos)
    keys = rng.integers(0, 2**63, len(owners), dtype=np.uint64)
    copies = rng.choice(len(keys), (args.pairs, 2), replace=False)
    keys[copies[:, 1]] = keys[copies[:, 0]]
    shared, seconds, peak = measured(shared_keys, keys, owners)
    expected = {tuple(sorted(pair)) for pair in owners[copies].tolist() if pair[0] != pair[1]}
    print(f"shared photos: {len(keys):,} photo keys: {seconds:.1f} s, peak {peak:.0f} MiB allocated; "
          f"{len(shared)} identity pairs, exact: {shared == expected}")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")
    if found != planted or shared != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
