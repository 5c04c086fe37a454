"""Which photos may serve a target as references, and which are preferred: shared by the training sampler
(pipeline/training.py), the generator's reference choice and the report's pair counts.

A reference never comes from the target's near-duplicate group (`dup_group`: the same photo resized,
re-encoded, cropped or mirrored), and never has a target face more alike than `training.copy_paste_max`
(cosine of the stored target-face embeddings): such a pair shows the target's own shoot, and a model
trained on it learns to paste the reference rather than the person. Among the allowed photos, those
whose head turns differently from the target's are drawn more often (`pose_weights`), so the model
sees the person from other angles rather than the target's own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Degrees of yaw difference that add the weight of a same-pose photo: a photo 45 degrees apart is drawn 4x as often.
POSE_SCALE = 15.0


def target_evidence(row: dict[str, Any]) -> tuple[np.ndarray, float]:
    """A row's target-face embedding (L2-normalised) and yaw (NaN where unmeasured)."""
    face = row["faces"][row["target_face"]]
    vector = np.asarray(face["embedding"], dtype=np.float32)
    yaw = face.get("yaw")
    return vector / max(float(np.linalg.norm(vector)), 1e-12), np.nan if yaw is None else float(yaw)


def too_similar(vectors: np.ndarray, groups: np.ndarray, copy_paste_max: float) -> np.ndarray:
    """(n, n) bool: pairs of different near-duplicate groups whose target faces exceed copy_paste_max."""
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    return (sims > copy_paste_max) & (groups[:, None] != groups[None, :])


def allowed(groups: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """(n, n) bool: allowed[t, r] when photo r may be a reference of target t."""
    return (groups[:, None] != groups[None, :]) & ~blocked


def pose_weights(yaws: np.ndarray, target_yaw: float) -> np.ndarray:
    """Draw weights: 1 + |yaw difference| / POSE_SCALE; 1 where either yaw is unmeasured."""
    difference = np.abs(np.asarray(yaws, dtype=np.float64) - target_yaw)
    return 1.0 + np.nan_to_num(difference, nan=0.0) / POSE_SCALE


def weighted_sample(rng: random.Random, weights: Sequence[float], count: int) -> list[int]:
    """`count` distinct indices, drawn without replacement with chances in proportion to `weights` (> 0).

    Efraimidis-Spirakis: the largest u ** (1 / w), u uniform; the same rng state gives the same draw.
    """
    keys = [rng.random() ** (1.0 / weight) for weight in weights]
    return sorted(range(len(keys)), key=lambda index: -keys[index])[:count]


@dataclass(frozen=True)
class PairCounts:
    """One identity's training pairs under the reference rules."""

    photos: int  # rows
    groups: int  # distinct photos (near-duplicate groups)
    pairs: int  # (target, reference) pairs allowed
    blocked: int  # pairs of different groups refused as copy-paste
    servable: int  # targets with at least `min_refs` allowed groups


def pair_counts(vectors: np.ndarray, groups: np.ndarray, copy_paste_max: float, min_refs: int = 1) -> PairCounts:
    """The pairs an identity offers: `vectors` its rows' target faces, `groups` their near-duplicate groups."""
    groups = np.asarray(groups)
    blocked = too_similar(vectors, groups, copy_paste_max)
    ok = allowed(groups, blocked)
    served = [len(np.unique(groups[row])) >= min_refs for row in ok]
    return PairCounts(len(groups), len(np.unique(groups)), int(ok.sum()), int(blocked.sum()), int(sum(served)))
