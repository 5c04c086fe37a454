"""Diverse references: with `verify.max_images: K`, an identity keeps the K photos that best cover its variety.

A trainer draws references from an identity's photos; fifty frontal shots of one press event teach it less
than ten photos from ten angles. So among the photos verify would keep, the K kept are chosen by
farthest-point selection: start from the most typical photo (the target face closest to the centroid),
then repeatedly add the photo farthest from every photo chosen so far. Distance combines head pose and the
face embedding:

- pose: yaw and pitch of the target face (filter's evidence), in units of POSE_SCALE degrees (the pair
  rules' scale, pipeline/core/pairs.py); an unmeasured angle counts as frontal;
- embedding: 1 - cosine, divided by the identity's median pairwise value, so that a typical pair of its
  photos is one unit apart whatever the backend's similarity scale (dlib's same-person cosines sit near
  0.95, SFace's near 0.6).

Age and expression are not measured before verify (the gender/age model runs in safety_scores and caption),
so they take no part. The selection is deterministic: ties go to the earlier row (rows come sorted by
image_id), and near-duplicates (one dup_group) are at distance 0 from each other, so they are the last chosen.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.pairs import POSE_SCALE
from stages.base import Row


def target_pose(faces: list[Row], target: int) -> tuple[float, float]:
    """(yaw, pitch) of the target face in degrees; 0 where unmeasured."""
    yaw, pitch = (faces[target].get(angle) for angle in ("yaw", "pitch"))
    return 0.0 if yaw is None else float(yaw), 0.0 if pitch is None else float(pitch)


def distances(poses: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """(n, n) distances between photos: pose in POSE_SCALE units and scaled embedding distance, combined."""
    vectors = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    apart = 1.0 - np.clip(vectors @ vectors.T, -1.0, 1.0)
    off_diagonal = apart[~np.eye(len(apart), dtype=bool)]
    typical = float(np.median(off_diagonal)) if off_diagonal.size else 0.0
    apart = apart / typical if typical > 1e-9 else np.zeros_like(apart)
    turned = np.linalg.norm(poses[:, None, :] - poses[None, :, :], axis=2) / POSE_SCALE
    return np.sqrt(turned**2 + apart**2)


def farthest_points(distance: np.ndarray, first: int, count: int) -> list[int]:
    """`count` indices: `first`, then each time the one whose nearest chosen index is farthest."""
    chosen = [first]
    nearest = distance[first].copy()
    while len(chosen) < min(count, len(distance)):
        nearest[chosen] = -np.inf
        pick = int(np.argmax(nearest))  # first of equals: deterministic
        chosen.append(pick)
        nearest = np.minimum(nearest, distance[pick])
    return chosen


def not_selected(
    rows: list[Row], targets: np.ndarray, usable: np.ndarray, sims: np.ndarray, groups: list[str], limit: int | None
) -> dict[int, str]:
    """Row index -> drop detail, for the usable rows that farthest-point selection leaves out under `limit`.

    `sims`: each row's target-face similarity to the centroid; `groups`: its near-duplicate group (verify's
    dup_group), whose members count as one photo: no copy is chosen before every other photo is.
    """
    candidates = np.flatnonzero(usable)
    if limit is None or len(candidates) <= limit:
        return {}
    faces = [rows[i]["faces"][int(targets[i])] for i in candidates]
    poses = np.array([target_pose(rows[i]["faces"], int(targets[i])) for i in candidates], dtype=np.float64)
    embeddings = np.array([face["embedding"] for face in faces], dtype=np.float64)
    distance = distances(poses, embeddings)
    members = np.array([groups[i] for i in candidates])
    distance[members[:, None] == members[None, :]] = 0.0
    chosen = farthest_points(distance, int(np.argmax(sims[candidates])), limit)
    left = np.setdiff1d(np.arange(len(candidates)), chosen)
    closest = distance[np.ix_(left, chosen)].min(axis=1)
    detail = "farthest-point selection over pose and embedding kept {} of {}; nearest kept photo {:.2f} apart"
    return {int(candidates[i]): detail.format(limit, len(candidates), d) for i, d in zip(left, closest, strict=True)}


def pose_spread(poses: np.ndarray) -> float:
    """How widely an identity's photos turn: the root-mean-square distance of (yaw, pitch) from its mean, in degrees."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 2)
    if len(poses) == 0:
        return 0.0
    return float(np.sqrt(((poses - poses.mean(axis=0)) ** 2).sum(axis=1).mean()))
