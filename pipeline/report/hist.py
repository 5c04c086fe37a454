"""Fixed-bin histograms filled one identity at a time: memory stays flat however big the run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Histogram:
    """Counts per series over fine fixed bins; values outside [lo, hi) land in the end bins."""

    title: str
    xlabel: str
    lo: float
    hi: float
    bins: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    moments: dict[str, list[float]] = field(default_factory=dict)  # series -> [n, sum, min, max]

    def add(self, series: str, values: list[float]) -> None:
        values = [v for v in values if v is not None and np.isfinite(v)]
        if not values:
            return
        array = np.asarray(values, dtype=np.float64)
        index = np.clip(((array - self.lo) / (self.hi - self.lo) * self.bins).astype(int), 0, self.bins - 1)
        self.counts.setdefault(series, np.zeros(self.bins, dtype=np.int64))
        np.add.at(self.counts[series], index, 1)
        n, total, low, high = self.moments.get(series, [0, 0.0, np.inf, -np.inf])
        self.moments[series] = [n + len(array), total + array.sum(), min(low, array.min()), max(high, array.max())]

    @property
    def empty(self) -> bool:
        return not self.counts

    def zoomed(self, max_bins: int = 40, include: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Edges and counts over the occupied range (and `include`, e.g. a threshold), merged to <= max_bins."""
        occupied = np.flatnonzero(sum(self.counts.values()))
        first, last = occupied[0], occupied[-1] + 1
        if include is not None:
            mark = int(np.clip((include - self.lo) / (self.hi - self.lo) * self.bins, 0, self.bins - 1))
            first, last = min(first, mark), max(last, mark + 1)
        step = max(1, -(-(last - first) // max_bins))
        last = min(self.bins, first + step * -(-(last - first) // step))
        width = (self.hi - self.lo) / self.bins
        edges = self.lo + width * np.append(np.arange(first, last, step), last)
        merged = {s: np.add.reduceat(c[first:last], np.arange(0, last - first, step)) for s, c in self.counts.items()}
        return edges, merged

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            series: {"count": int(n), "mean": total / n, "min": float(low), "max": float(high)}
            for series, (n, total, low, high) in self.moments.items()
        }


def distributions() -> dict[str, Histogram]:
    return {
        "short_side": Histogram("Resolution", "short side (px)", 0, 4096, 256),
        "face_size": Histogram("Face size", "largest face box, longer side (px)", 0, 2048, 256),
        "sim_to_centroid": Histogram("Similarity to identity centroid", "cosine", -1.0, 1.0, 1600),
        # the target face's quality evidence, each against its verify.quality gate
        "sharpness": Histogram("Face sharpness", "log10 variance of the Laplacian (face region at 160 px)", -1, 5, 600),
        "yaw": Histogram("Head yaw", "|yaw| (degrees, from the landmarks)", 0, 90, 180),
        "pitch": Histogram("Head pitch", "|pitch| (degrees, from the landmarks)", 0, 90, 180),
        "face_score": Histogram("Detector score", "score on the detector's own scale", -2, 5, 1400),
        "image_share": Histogram("Face share of the image", "target face box area / image area", 0.0, 1.0, 2000),
        "large_faces": Histogram("Large faces per image", "faces at least half the target's side", 0, 20, 20),
        "mask_area": Histogram("Mask area", "share of the crop inside the person mask", 0.0, 1.0, 100),
        "caption_words": Histogram("Caption length", "words", 0, 80, 80),
    }


@dataclass
class Distributions:
    hists: dict[str, Histogram] = field(default_factory=distributions)
    class_words: Counter[str] = field(default_factory=Counter)
