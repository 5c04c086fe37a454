"""The identity decision behind the verify stage, in numpy/scipy over stored embeddings and hashes.

See `stages/verify.py` for the rule and why; nothing here decodes an image or runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import VerifySection
from stages.base import Row
from stages.faces import Calibration


@dataclass(frozen=True)
class Settings:
    """The verify section with the face backend's applied calibration."""

    threshold: float
    cluster_threshold: float
    dup_similarity: float
    dup_hamming: int
    min_images: int
    competing_ratio: float

    @classmethod
    def of(cls, section: VerifySection, calibration: Calibration) -> Settings:
        return cls(
            threshold=calibration.threshold,
            cluster_threshold=calibration.cluster_threshold,
            dup_similarity=calibration.dup_similarity,
            dup_hamming=section.dup_hamming,
            min_images=section.min_images,
            competing_ratio=section.competing_ratio,
        )


@dataclass(frozen=True)
class Folder:
    """Every face of one identity's images, flattened: face k belongs to image `owner[k]`."""

    image_ids: list[str]
    phashes: list[str | None]
    vectors: np.ndarray  # (faces, dim) float64, L2-normalised
    owner: np.ndarray  # (faces,) image index

    @classmethod
    def of(cls, rows: list[Row]) -> Folder:
        embeddings = [face["embedding"] for row in rows for face in row["faces"]]
        owner = [index for index, row in enumerate(rows) for _ in row["faces"]]
        vectors = unit_rows(np.asarray(embeddings, dtype=np.float64))
        return cls([row["image_id"] for row in rows], [row["phash"] for row in rows], vectors, np.asarray(owner))

    @classmethod
    def of_table(cls, table: pa.Table) -> Folder:
        """As `of`, from one identity's rows with faces (sorted by image_id), without a Python object per face."""
        faces = table["faces"].combine_chunks()
        counts = pc.list_value_length(faces).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(pc.list_flatten(faces).field("embedding")).to_numpy(zero_copy_only=False)
        vectors = unit_rows(flat.astype(np.float64).reshape(int(counts.sum()), -1))
        owner = np.repeat(np.arange(len(counts)), counts)
        return cls(table["image_id"].to_pylist(), table["phash"].to_pylist(), vectors, owner)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class Decision:
    """Per-image evidence (arrays indexed by image) and the identity-level figures."""

    target: np.ndarray  # face index (into the folder's faces) of each image's target
    sim: np.ndarray
    runner_up: np.ndarray  # NaN where the image has one face
    passed: np.ndarray  # the target face reaches the threshold
    cluster_size: int
    competing: bool


def cluster_labels(vectors: np.ndarray, cluster_threshold: float) -> np.ndarray:
    if len(vectors) == 1:
        return np.ones(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage  # here: 0.2 s to import, loaded by VerifyStage.setup

    tree = linkage(vectors, method="average", metric="cosine")
    return fcluster(tree, t=1.0 - cluster_threshold, criterion="distance")


def cluster_images(labels: np.ndarray, owner: np.ndarray) -> dict[int, np.ndarray]:
    """Cluster label -> the distinct images it covers."""
    return {int(label): np.unique(owner[labels == label]) for label in np.unique(labels)}


def dominant_label(labels: np.ndarray, folder: Folder, sims: np.ndarray) -> int:
    """Most images; ties: the higher mean similarity inside the cluster, then the smallest image_id."""

    def rank(label: int) -> tuple[int, float, int]:
        members = labels == label
        images = np.unique(folder.owner[members])
        return len(images), float(sims[np.ix_(members, members)].mean()), -int(images.min())

    return max(np.unique(labels).tolist(), key=rank)


def representatives(members: np.ndarray, folder: Folder, sims: np.ndarray) -> np.ndarray:
    """Per image, its dominant-cluster face closest to the rest of the cluster; -1 where it has none."""
    closeness = np.where(members, sims[:, members].sum(axis=1), -np.inf)
    chosen = np.full(folder.num_images, -1)
    for face in np.flatnonzero(members):
        image = folder.owner[face]
        if chosen[image] < 0 or closeness[face] > closeness[chosen[image]]:
            chosen[image] = face
    return chosen


def leave_one_out_sims(folder: Folder, chosen: np.ndarray) -> np.ndarray:
    """Cosine of each face to the centroid of the dominant cluster without the face's own image."""
    in_cluster = chosen >= 0
    own = np.zeros((folder.num_images, folder.vectors.shape[1]))
    own[in_cluster] = folder.vectors[chosen[in_cluster]]
    total = own.sum(axis=0)
    # a one-image cluster has no "others": its face is the centroid
    centroids = total - own if in_cluster.sum() > 1 else np.broadcast_to(total, own.shape)
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return np.einsum("fd,fd->f", folder.vectors, centroids[folder.owner])


def best_two(sims: np.ndarray, folder: Folder) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the best-scoring face (first on ties) and the runner-up's score (NaN if alone)."""
    target = np.full(folder.num_images, -1)
    runner_up = np.full(folder.num_images, np.nan)
    for face in range(len(sims)):  # faces are grouped by image, in order
        image = folder.owner[face]
        best = target[image]
        if best < 0 or sims[face] > sims[best]:
            runner_up[image] = sims[best] if best >= 0 else np.nan
            target[image] = face
        elif np.isnan(runner_up[image]) or sims[face] > runner_up[image]:
            runner_up[image] = sims[face]
    return target, runner_up


def decide(folder: Folder, settings: Settings, person: np.ndarray | None = None) -> Decision:
    """Verify's decision for one folder; `person`: the centroid of the cluster to take instead of the dominant
    one (the run's identity choice gave the dominant person to another name, `stages/identity_choice.py`)."""
    sims = folder.vectors @ folder.vectors.T
    labels = cluster_labels(folder.vectors, settings.cluster_threshold)
    dominant = dominant_label(labels, folder, sims) if person is None else closest_label(labels, folder, sims, person)
    chosen = representatives(labels == dominant, folder, sims)
    face_sims = leave_one_out_sims(folder, chosen)
    target, runner_up = best_two(face_sims, folder)
    passed = face_sims[target] >= settings.threshold
    competing = is_competing(cluster_images(labels, folder.owner), dominant, passed, settings)
    return Decision(target, face_sims[target], runner_up, passed, int((chosen >= 0).sum()), competing)


@dataclass(frozen=True)
class Candidate:
    """A cluster of a folder that could be its identity: what the run's identity choice weighs."""

    images: int  # distinct images it covers
    solo: int  # of those, images where it is the only face (portraits rather than group photos)
    centroid: np.ndarray  # unit float32: the mean of one face per image, as verify's centroid
    dominant: bool  # the one verify takes on its own


def candidates(folder: Folder, settings: Settings) -> list[Candidate]:
    """Every cluster covering at least `min_images` images (fewer could never keep the identity)."""
    sims = folder.vectors @ folder.vectors.T
    labels = cluster_labels(folder.vectors, settings.cluster_threshold)
    dominant = dominant_label(labels, folder, sims)
    faces_per_image = np.bincount(folder.owner, minlength=folder.num_images)
    found = []
    for label, images in cluster_images(labels, folder.owner).items():
        if len(images) >= settings.min_images:
            solo = int((faces_per_image[images] == 1).sum())
            centroid = cluster_centroid(labels == label, folder, sims).astype(np.float32)
            found.append(Candidate(len(images), solo, centroid, label == dominant))
    return found


def cluster_centroid(members: np.ndarray, folder: Folder, sims: np.ndarray) -> np.ndarray:
    chosen = representatives(members, folder, sims)
    total = folder.vectors[chosen[chosen >= 0]].sum(axis=0)
    return total / max(float(np.linalg.norm(total)), np.finfo(np.float64).tiny)


def closest_label(labels: np.ndarray, folder: Folder, sims: np.ndarray, person: np.ndarray) -> int:
    """The cluster whose centroid is closest to `person` (computed the same way from the same faces: equal)."""
    return max(np.unique(labels).tolist(),
               key=lambda label: float(cluster_centroid(labels == label, folder, sims) @ person))


def is_competing(clusters: dict[int, np.ndarray], dominant: int, passed: np.ndarray, settings: Settings) -> bool:
    """Another cluster covers, among the images where the identity was not found, at least `min_images`
    and `competing_ratio` of the dominant cluster's images. A co-star beside the identity is no rival."""
    size = len(clusters[dominant])
    rival = max((int((~passed[images]).sum()) for label, images in clusters.items() if label != dominant), default=0)
    return rival >= max(settings.min_images, settings.competing_ratio * size)


def hamming_matrix(phashes: list[str | None]) -> np.ndarray:
    """Pairwise bit differences of 64-bit hex hashes; 65 (beyond any threshold) where one is missing."""
    values = np.array([int(h, 16) if h else 0 for h in phashes], dtype=np.uint64)
    xor = values[:, None] ^ values[None, :]
    bits = np.unpackbits(xor.view(np.uint8).reshape(len(values), len(values), 8), axis=-1).sum(axis=-1)
    missing = np.array([not h for h in phashes])
    return np.where(missing[:, None] | missing[None, :], 65, bits)


def dup_groups(folder: Folder, target: np.ndarray, settings: Settings) -> list[str]:
    """Near-duplicate groups, each named by its smallest image_id."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    faces = folder.vectors[target]
    linked = (faces @ faces.T >= settings.dup_similarity) | (hamming_matrix(folder.phashes) <= settings.dup_hamming)
    _, component = connected_components(csr_matrix(linked), directed=False)
    names = {}
    for image in np.argsort(folder.image_ids):  # smallest image_id first names its group
        names.setdefault(component[image], folder.image_ids[image])
    return [names[c] for c in component]
