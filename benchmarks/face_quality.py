"""Where the quality-gate and copy-paste defaults come from: the labelled photos' target faces, per backend.

    python benchmarks/face_quality.py [--backend sface|dlib|all]

Every labelled identity's photos go through the real filter (detection, embeddings, quality evidence)
and verify with the quality gates open, so the target face is verify's own choice. Printed per backend:
the range of each gate's measure over those target faces (FaceQualitySection's defaults must keep them
all), and the cosine of pairs of distinct photos of one person (each backend's
`calibration.copy_paste_max`, beside its model, sits above the typical pair, below a copy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import FACES, labels
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.rundir import RunDir
from pipeline.core.schema import NAMES, OK, PROVENANCE, extend
from stages.filter import FilterStage
from stages.verify import VerifyStage

OPEN_GATES = ["verify.quality.min_sharpness=0", "verify.quality.max_yaw=90", "verify.quality.max_pitch=90",
              "verify.quality.min_image_share=0", "verify.quality.min_face_score=-100"]
SMALL = ["filter.min_face_size=40", "filter.min_short_side=128"]  # below every labelled face and photo


def crawl_rows(identity: str, photos: list[str], run: RunDir) -> pa.Table:
    rows = []
    for photo in photos:
        run.write_bytes(f"raw/{identity}/{photo}", (FACES / "images" / photo).read_bytes())
        rows.append({"identity": identity, "name": identity, "image_id": photo, "status": OK,
                     "raw_path": f"raw/{identity}/{photo}"})
    return pa.Table.from_pylist(rows, schema=extend(NAMES, PROVENANCE))


def target_faces(backend: str) -> dict[str, list[dict]]:
    """Per identity, the target face (quality evidence, embedding, `dup_group`) of every photo verify keeps."""
    config = load_config(resolve_profile("cpu"), [f"face.backend={backend}", *SMALL, *OPEN_GATES])
    run = RunDir(tempfile.mkdtemp())
    stage = FilterStage(config, run)
    stage.setup()
    verify = VerifyStage(config, run)
    kept = {}
    for identity, photos in labels().items():
        rows = verify.process(stage.process(crawl_rows(identity, photos, run))).to_pylist()
        kept[identity] = [{**row["faces"][row["target_face"]], "dup_group": row["dup_group"] or row["image_id"]}
                          for row in rows if row["status"] == OK]
    return kept


def same_person_pairs(kept: dict[str, list[dict]]) -> np.ndarray:
    """Cosines of every pair of one identity's kept photos from different near-duplicate groups."""
    sims = []
    for faces in (faces for faces in kept.values() if faces):
        vectors = np.array([face["embedding"] for face in faces], dtype=np.float64)
        groups = np.array([face["dup_group"] for face in faces])
        upper = np.triu(groups[:, None] != groups[None, :], 1)
        sims.extend((vectors @ vectors.T)[upper])
    return np.array(sims)


def report(backend: str) -> None:
    kept = target_faces(backend)
    faces = [face for group in kept.values() for face in group]
    print(f"\n{backend}: {len(faces)} target faces of {len(kept)} identities")
    for key, take in [("sharpness", min), ("score", min), ("image_share", min)]:
        values = np.array([face[key] for face in faces])
        print(f"  {key:12s} min {take(values):.4g}  5% {np.percentile(values, 5):.4g}  median {np.median(values):.4g}")
    for key in ("yaw", "pitch", "roll"):
        values = np.abs([face[key] for face in faces])
        print(f"  |{key}|{'':<{10 - len(key)}} max {values.max():.1f}  95% {np.percentile(values, 95):.1f}  median {np.median(values):.1f}")
    pairs = same_person_pairs(kept)
    print(f"  distinct photos of one person: median {np.median(pairs):.3f}  90% <= {np.percentile(pairs, 90):.3f}"
          f"  max {pairs.max():.3f}  ({len(pairs)} pairs; copies sit above verify's dup_similarity)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sface", "dlib", "all"], default="all")
    backend = parser.parse_args().backend
    for name in ["sface", "dlib"] if backend == "all" else [backend]:
        report(name)


if __name__ == "__main__":
    main()
