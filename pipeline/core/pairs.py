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


# Whole-image phash bits within which two photos of different near-duplicate groups count as one scene (the same
# backdrop, shoot or stage; verify's near-duplicates are within 10). A starting point: the labelled photos hold no
# two shots of one scene to measure it on.
SCENE_HAMMING = 20


@dataclass(frozen=True)
class Difficulty:
    """How hard a (target, reference) pair is: a trainer samples hard pairs (low similarity, a turned head, another
    scene) to learn the person rather than the photo."""

    similarity: float  # cosine of the two target faces
    pose_difference: float  # degrees between the two heads (yaw and pitch); NaN where either is unmeasured
    same_scene: bool  # the same source page, or whole-image phashes within SCENE_HAMMING bits

    def as_list(self) -> list[float]:
        return [self.similarity, self.pose_difference, float(self.same_scene)]


def head_angles(face: dict[str, Any]) -> np.ndarray:
    """(yaw, pitch) of a stored face, NaN where unmeasured."""
    return np.array([np.nan if face.get(angle) is None else float(face[angle]) for angle in ("yaw", "pitch")])


def same_scene(target: dict[str, Any], reference: dict[str, Any]) -> bool:
    """One source page, or whole images whose perceptual hashes differ in at most SCENE_HAMMING bits."""
    if target.get("page_url") and target.get("page_url") == reference.get("page_url"):
        return True
    hashes = target.get("phash"), reference.get("phash")
    return None not in hashes and bin(int(hashes[0], 16) ^ int(hashes[1], 16)).count("1") <= SCENE_HAMMING


def pair_difficulty(target: dict[str, Any], reference: dict[str, Any]) -> Difficulty:
    """The difficulty of serving `target` with `reference`, from the rows' stored faces, page_url and phash."""
    (vector, _), (other, _) = target_evidence(target), target_evidence(reference)
    angles = [head_angles(row["faces"][row["target_face"]]) for row in (target, reference)]
    turned = float(np.linalg.norm(angles[0] - angles[1]))
    return Difficulty(float(vector @ other), turned, same_scene(target, reference))
