"""A label for every face: each face of a kept photo assigned to at most one identity of the run, each identity
to at most one face of a photo (docs/multi-identity.md).

numpy, scipy and faiss only; the hygiene stage's whole-run step (`stages/face_labels_run.py`) feeds it the
identity centroids and the faces of the photos that hold more than one.

A face may take an identity only when its cosine to that identity's centroid reaches verify's threshold and
beats its runner-up identity by `hygiene.label_margin`; so only a face's closest identity is ever eligible, and
the assignment (`linear_sum_assignment`) settles two faces of one photo that are closest to the same identity.
The photo's target face keeps the identity it is kept under, by construction, and no other face takes it.

The closest two identities of each face come from an exact search over the centroids (faiss's flat inner
product: blocked matrix products in BLAS, the top two kept per block, so memory holds one block whatever the
number of identities). Only the faces of photos with several faces are searched.
Graph and inverted-file indexes (faiss HNSW, IVF) were measured and not taken: on 512-d centroids of unrelated
people, within twice the exact search's time at 1k identities they find under half of the labels at 100k, and
HNSW costs more than the exact search before it finds nine in ten (benchmarks/face_labels.py --ann,
docs/multi-identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.core.schema import OK

NEIGHBOURS = 2  # the closest identity and its runner-up: all the margin rule needs
NO_IDENTITY = -1


@dataclass(frozen=True)
class LabelRules:
    threshold: float  # verify's: the cosine a face needs to its identity's centroid
    margin: float  # hygiene.label_margin: over the runner-up identity


class CentroidIndex:
    """The run's identity centroids (unit rows), searched exactly for each face's two closest identities."""

    def __init__(self, centroids: np.ndarray) -> None:
        import faiss  # heavy: loaded only by a run that labels faces

        vectors = np.ascontiguousarray(centroids, dtype=np.float32)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.size = len(vectors)

    def nearest(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, identity indices), each (faces, NEIGHBOURS), closest first; -1 where the run has fewer."""
        return self.index.search(np.ascontiguousarray(faces, dtype=np.float32), NEIGHBOURS)


@dataclass(frozen=True)
class Photo:
    """One photo's faces as the index saw them, and the face and identity it is kept under."""

    sims: np.ndarray  # (faces, NEIGHBOURS) cosines, closest first
    ids: np.ndarray  # (faces, NEIGHBOURS) identity indices
    target: int  # the target face
    own: int  # the identity the photo is kept under
    own_score: float  # the target face's cosine to its centroid


def label_photo(photo: Photo, rules: LabelRules) -> tuple[np.ndarray, np.ndarray]:
    """Per face: its identity index (NO_IDENTITY when none) and the cosine behind it (NaN when none)."""
    identities = np.full(len(photo.sims), NO_IDENTITY, np.int64)
    scores = np.full(len(photo.sims), np.nan, np.float32)
    eligible = eligible_faces(photo, rules)
    columns = sorted({int(photo.ids[face, 0]) for face in eligible})
    if columns:
        gain = np.zeros((len(photo.sims), len(columns)))
        for face in eligible:
            gain[face, columns.index(int(photo.ids[face, 0]))] = 1.0 + photo.sims[face, 0]  # > 0: better than none
        for face, column in zip(*linear_sum_assignment(gain, maximize=True), strict=True):
            if gain[face, column] > 0:
                identities[face], scores[face] = columns[column], photo.sims[face, 0]
    identities[photo.target], scores[photo.target] = photo.own, photo.own_score
    return identities, scores


def eligible_faces(photo: Photo, rules: LabelRules) -> list[int]:
    """Faces other than the target whose closest identity is not the photo's own, reaches the threshold and beats
    the runner-up by the margin (a run of one identity has no runner-up: the threshold alone decides)."""
    best, second = photo.sims[:, 0], np.where(photo.ids[:, 1] >= 0, photo.sims[:, 1], -1.0)
    ok = (best >= rules.threshold) & (best - second >= rules.margin) & (photo.ids[:, 0] != photo.own)
    ok[photo.target] = False
    return np.flatnonzero(ok).tolist()


def labelled(rows: list[dict], labels: list[dict]) -> list[dict]:
    """The kept rows with every face's identity and score, `identities` (left to right) and `num_identities`.

    `labels`: the task's rows of LABELS (photos with several faces); a photo with one face is its target's."""
    by_image = {label["image_id"]: label for label in labels}
    out = []
    for row in rows:
        if row["status"] != OK:
            out.append({**row, "identities": None, "num_identities": None})
            continue
        label = by_image.get(row["image_id"]) or {"face_identities": [row["identity"]],
                                                   "face_scores": [row["sim_to_centroid"]]}
        faces = [{**face, "identity": who, "identity_score": score}
                 for face, who, score in zip(row["faces"], label["face_identities"], label["face_scores"], strict=True)]
        named = sorted((face for face in faces if face["identity"]), key=lambda face: face["box"][0] + face["box"][2])
        out.append({**row, "faces": faces, "identities": [face["identity"] for face in named],
                    "num_identities": len(named)})
    return out
