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
ALL = slice(None)  # every row as a target


def target_evidence(row: dict[str, Any]) -> tuple[np.ndarray, float]:
    """A row's target-face embedding (L2-normalised) and yaw (NaN where unmeasured)."""
    face = row["faces"][row["target_face"]]
    vector = np.asarray(face["embedding"], dtype=np.float32)
    yaw = face.get("yaw")
    return vector / max(float(np.linalg.norm(vector)), 1e-12), np.nan if yaw is None else float(yaw)


def similarities(vectors: np.ndarray, targets: slice = ALL) -> np.ndarray:
    """(targets, n): cosines of the `targets` rows' faces with every row's (`vectors` L2-normalised), in float64."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors[targets] @ vectors.T


def too_similar(vectors: np.ndarray, groups: np.ndarray, copy_paste_max: float, targets: slice = ALL) -> np.ndarray:
    """(targets, n) bool: pairs of different near-duplicate groups whose target faces exceed copy_paste_max."""
    return (similarities(vectors, targets) > copy_paste_max) & (groups[targets, None] != groups[None, :])


def allowed(groups: np.ndarray, blocked: np.ndarray, targets: slice = ALL) -> np.ndarray:
    """(targets, n) bool: allowed[t, r] when photo r may be a reference of target t."""
    return (groups[targets, None] != groups[None, :]) & ~blocked


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


@dataclass(frozen=True)
class PairEvidence:
    """What the difficulty of every pair of n rows (one identity's) is computed from: the per-item difficulty
    (`pair_difficulty`) and the stored pair index (pipeline/dataset/pair_index.py) both read it."""

    vectors: np.ndarray  # (n, dim) target faces, L2-normalised
    angles: np.ndarray  # (n, 2) yaw and pitch of the target faces, NaN where unmeasured
    pages: list[str | None]  # source pages
    phashes: np.ndarray  # (n,) uint64 whole-image perceptual hashes (0 where absent)
    has_phash: np.ndarray  # (n,) bool

    @classmethod
    def of_rows(cls, rows: Sequence[dict[str, Any]]) -> PairEvidence:
        """From rows with `faces`, `target_face`, `page_url` and `phash` (the last two may be absent)."""
        vectors = np.stack([target_evidence(row)[0] for row in rows])
        angles = np.stack([head_angles(row["faces"][row["target_face"]]) for row in rows])
        phashes = [row.get("phash") for row in rows]
        return cls(vectors, angles, [row.get("page_url") or None for row in rows],
                   np.array([int(value[:16], 16) if value else 0 for value in phashes], dtype=np.uint64),
                   np.array([bool(value) for value in phashes]))

    def pose_difference(self, targets: slice = ALL) -> np.ndarray:
        """(targets, n) degrees between the heads (yaw and pitch), NaN where either is unmeasured."""
        return np.linalg.norm(self.angles[targets, None, :] - self.angles[None, :, :], axis=-1)

    def same_scene(self, targets: slice = ALL) -> np.ndarray:
        """(targets, n) bool: one source page, or whole-image phashes within SCENE_HAMMING bits."""
        pages = np.array(self.pages, dtype=object)
        same_page = (pages[targets, None] == pages[None, :]) & (pages != None)[targets, None]  # noqa: E711
        bits = np.bitwise_count(self.phashes[targets, None] ^ self.phashes[None, :])
        near = (bits <= SCENE_HAMMING) & self.has_phash[targets, None] & self.has_phash[None, :]
        return same_page | near


def pair_difficulty(target: dict[str, Any], reference: dict[str, Any]) -> Difficulty:
    """The difficulty of serving `target` with `reference`, from the rows' stored faces, page_url and phash."""
    evidence = PairEvidence.of_rows([target, reference])
    similarity = similarities(evidence.vectors, slice(0, 1))[0, 1]
    return Difficulty(float(similarity), float(evidence.pose_difference(slice(0, 1))[0, 1]),
                      bool(evidence.same_scene(slice(0, 1))[0, 1]))


# How much harder each measure makes a pair in `hard_pair_weights`: a pair 0.25 less alike, or 15 degrees more
# turned, weighs one unit more; another scene doubles the weight.
SIMILARITY_SCALE = 0.25
OTHER_SCENE = 2.0


def hard_pair_weights(similarity: np.ndarray, pose_difference: np.ndarray, same_scene: np.ndarray) -> np.ndarray:
    """Draw weights that favour hard pairs (for `IdentityDataset(pair_weights=...)`): less alike faces, turned
    heads (an unmeasured pose counts as none) and another scene; always > 0."""
    unlike = 1.0 + np.clip(1.0 - np.asarray(similarity, dtype=np.float64), 0.0, 2.0) / SIMILARITY_SCALE
    turned = 1.0 + np.nan_to_num(np.asarray(pose_difference, dtype=np.float64), nan=0.0) / POSE_SCALE
    return unlike * turned * np.where(np.asarray(same_scene, dtype=bool), 1.0, OTHER_SCENE)
