"""Person-mask quality per segment backend on crops of the real labelled photos (CPU, about 2 minutes).

    python benchmarks/mask_quality.py [--sides 512 320 256]

Crops are cut by the crop stage (crop.size=512) around the faces of `--faces` (sface, the cpu profile's; or dlib) (benchmarks/fixtures/segment_crops.py): one per
single-person photo, one per face of each group photo. Each backend runs through the segment stage,
so drops are the stage's. Per backend: masks/s through the stage (and CPU seconds per mask, which
shared cores disturb less); mean coverage of the target face box (the stage's `mask_face_coverage`:
dlib's boxes reach past the cheeks into the background, so an exact mask scores below 1) and of the
hull of its five landmarks (eyes, nose, mouth: surely face); share of masks over 85% of the crop;
mean share of each other face's box inside the mask (other faces in the crop, group rows); share of
rows dropped and why; mean IoU of its masks with the first backend's (by default modnet at 512,
MODNet's reference side).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `tests` importable

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.segment import SegmentStage
from stages.segmenters import decode_mask, face_coverage
from benchmarks.fixtures.segment_crops import corpus_photos, crop_rows

FILLS = 0.85  # a mask over this share of the crop took background (or the crop is all person)
TARGETS = {"coverage": 0.95, "over_85": 0.02, "other_faces": 0.2, "dropped": 0.10}  # modnet's


@dataclass
class Result:
    backend: str
    rows: int
    seconds: float
    cpu_seconds: float  # process CPU time, all threads: steadier than wall time on shared cores
    coverage: float
    landmarks: float
    over_85: float
    other_faces: float
    other_count: int
    dropped: float
    reasons: Counter
    masks: dict[str, np.ndarray]  # by image_id

    def iou_with(self, reference: Result) -> float:
        """Mean IoU with the reference's masks, over the crops both have a mask for."""
        shared = self.masks.keys() & reference.masks.keys()
        return float(np.mean([iou(self.masks[key], reference.masks[key]) for key in shared])) if shared else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def landmark_coverage(mask: np.ndarray, landmarks: list[float]) -> float:
    """Share of the convex hull of a face's landmarks (flat x, y, ...) inside the mask."""
    inside = np.zeros(mask.shape, np.uint8)
    points = np.round(np.asarray(landmarks).reshape(-1, 2)).astype(np.int32)
    cv2.fillConvexPoly(inside, cv2.convexHull(points), 1)
    return float(mask[inside > 0].mean()) if inside.any() else 0.0


def measure(label: str, crops: pa.Table, run: RunDir, *overrides: str) -> Result:
    stage = SegmentStage(load_config(resolve_profile("cpu"), list(overrides)), run)
    stage.setup()
    started, cpu = time.perf_counter(), time.process_time()
    rows = stage.process(crops).to_pylist()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    masked = [(row, decode_mask(row["mask"])) for row in rows if row["mask"] is not None]
    targets = [(row["crop_faces"][row["target_face"]], mask) for row, mask in masked]
    others = [
        face_coverage(mask, face["box"])
        for row, mask in masked
        for k, face in enumerate(row["crop_faces"])
        if k != row["target_face"] and face_coverage(np.ones_like(mask), face["box"]) > 0  # touches the crop
    ]
    dropped = [row["reason"] for row in rows if row["status"] != "ok"]
    return Result(
        backend=label,
        rows=len(rows),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        coverage=float(np.mean([face_coverage(mask, face["box"]) for face, mask in targets])),
        landmarks=float(np.mean([landmark_coverage(mask, face["landmarks"]) for face, mask in targets])),
        over_85=float(np.mean([row["mask_area"] > FILLS for row, _ in masked])),
        other_faces=float(np.mean(others)) if others else float("nan"),
        other_count=len(others),
        dropped=len(dropped) / len(rows),
        reasons=Counter(dropped),
        masks={row["image_id"]: mask for row, mask in masked},
    )


def print_table(results: list[Result]) -> None:
    print(f"{'backend':>12} {'masks/s':>8} {'CPU s/mask':>10} {'coverage':>9} {'landmarks':>9} {'>85%':>6} {'others':>7} {'dropped':>8} {'IoU ref':>8}  reasons")
    for r in results:
        cells = (f"{r.rows / r.seconds:.2f}", f"{r.cpu_seconds / r.rows:.3f}", f"{r.coverage:.3f}", f"{r.landmarks:.3f}", f"{r.over_85:.3f}",
                 f"{r.other_faces:.3f}", f"{r.dropped:.3f}", f"{r.iou_with(results[0]):.3f}")
        widths = (8, 10, 9, 9, 6, 7, 8, 8)
        print(f"{r.backend:>12} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
              + "  " + (", ".join(f"{k} {v}" for k, v in r.reasons.items()) or "-"))
    print(f"\ntargets (modnet): coverage >= {TARGETS['coverage']}, >85% <= {TARGETS['over_85']}, "
          f"others <= {TARGETS['other_faces']} (mean over {results[0].other_count} faces), dropped <= {TARGETS['dropped']}")
    for r in results:
        if r.backend.startswith("modnet"):
            met = [r.coverage >= TARGETS["coverage"], r.over_85 <= TARGETS["over_85"],
                   r.other_faces <= TARGETS["other_faces"], r.dropped <= TARGETS["dropped"]]
            print(f"{r.backend}: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}"
                                             for name, ok in zip(TARGETS, met, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", nargs="+", type=int, default=[512, 320, 256], help="modnet_side values")
    parser.add_argument("--faces", default="sface", choices=("sface", "dlib"), help="face backend the crops are cut around")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="masks-") as scratch:
        run = RunDir(scratch)
        started = time.perf_counter()
        crops = crop_rows(run, corpus_photos(), backend=args.faces)
        print(f"{crops.num_rows} crops (512 px) from {len(corpus_photos())} photos in "
              f"{time.perf_counter() - started:.1f} s ({args.faces} faces, crop stage)\n")
        runs = [(f"modnet:{side}", ["segment.backend=modnet", f"segment.modnet_side={side}"]) for side in args.sides]
        results = [measure(label, crops, run, *overrides) for label, overrides in runs]
    print_table(results)


if __name__ == "__main__":
    main()
