"""What `verify.max_images` buys: the pose spread of the K photos farthest-point selection keeps, on the labelled photos.

    python benchmarks/diversity.py [--keep 3]

Every labelled identity with more than K photos goes through the real filter (sface: detection, embeddings,
head pose) and verify, once with every photo and once with `verify.max_images=K`. Printed per identity: the
pose spread (RMS of yaw and pitch from their mean, degrees) of all its kept photos, of the K selected, of the
first K by image_id (what keeping "the first N" gives), and the mean over 200 random K-subsets.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import labels
from benchmarks.face_quality import SMALL, crawl_rows
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from stages.diversity import pose_spread, target_pose
from stages.filter import FilterStage
from stages.verify import VerifyStage

SUBSETS = 200


def poses(rows: list[dict]) -> np.ndarray:
    return np.array([target_pose(row["faces"], row["target_face"]) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=int, default=3)
    keep = parser.parse_args().keep
    base = load_config(resolve_profile("cpu"), [*SMALL, f"verify.min_images={keep}"])
    run = RunDir(tempfile.mkdtemp())
    stage = FilterStage(base, run)
    stage.setup()
    everything = VerifyStage(base, run)
    limited = VerifyStage(load_config(resolve_profile("cpu"), [*SMALL, f"verify.min_images={keep}",
                                                               f"verify.max_images={keep}"]), run)
    rng = random.Random(0)
    print(f"{'identity':22s} photos  all   selected  first {keep}  random {keep} (pose spread, degrees)")
    totals = []
    for identity, photos in labels().items():
        filtered = stage.process(crawl_rows(identity, photos, run))
        kept = sorted((r for r in everything.process(filtered).to_pylist() if r["status"] == OK),
                      key=lambda row: row["image_id"])
        if len(kept) <= keep:
            continue
        chosen = [r for r in limited.process(filtered).to_pylist() if r["status"] == OK]
        randoms = np.mean([pose_spread(poses(rng.sample(kept, keep))) for _ in range(SUBSETS)])
        row = [pose_spread(poses(kept)), pose_spread(poses(chosen)), pose_spread(poses(kept[:keep])), randoms]
        totals.append(row)
        print(f"{identity:22s} {len(kept):6d}  {row[0]:5.1f}  {row[1]:8.1f}  {row[2]:7.1f}  {row[3]:8.1f}")
    mean = np.mean(totals, axis=0)
    print(f"{'mean':22s} {'':6s}  {mean[0]:5.1f}  {mean[1]:8.1f}  {mean[2]:7.1f}  {mean[3]:8.1f}")


if __name__ == "__main__":
    main()
