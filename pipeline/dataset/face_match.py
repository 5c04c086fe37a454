"""Find a person's face among every stored face: the matching behind `remove --face` and `face:` opt-outs.

A stored face matches when its cosine to any of the requester's embeddings reaches verify's threshold
less `governance.face_match_margin`: a takedown errs toward the requester (on the labelled photos
SFace puts two photos of one person at >= 0.49 and of two people at <= 0.41, so 0.45 still parts
them). Per row the match is the *target* when it is the face verify chose (`target_face`), or,
where verify chose none (a row it dropped), the largest face; any other matched face is a
*bystander* beside someone else's target.

The work is one matrix product per table over the stored unit vectors (filter computed them once),
so a request over millions of faces costs seconds (benchmarks/face_takedown.py); no model runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.markers import part_path
from pipeline.core.rundir import RunDir
from stages.faces import FACES, applied_calibration
from stages.verify import VerifyStage

COLUMNS = ["identity", "image_id", "faces", "target_face"]  # what the matching reads of a table
Key = tuple[str, str]  # (identity, image_id)


@dataclass
class FaceMatches:
    targets: set[Key] = field(default_factory=set)  # rows where the requester is the person the photo is about
    bystanders: dict[Key, set[int]] = field(default_factory=dict)  # rows where they stand beside; their faces
    best: float = -1.0  # the highest similarity seen, matched or not (to tell a requester how close it came)

    def add(self, other: FaceMatches) -> None:
        self.targets |= other.targets
        for key, faces in other.bystanders.items():
            self.bystanders.setdefault(key, set()).update(faces)
        self.best = max(self.best, other.best)

    def settle(self) -> FaceMatches:
        """A row where the requester is the target is not also a bystander row."""
        self.bystanders = {key: faces for key, faces in self.bystanders.items() if key not in self.targets}
        return self


def match_cut(config: PipelineConfig) -> float:
    """The cosine a stored face needs: verify's threshold for the run's face backend, less the margin."""
    backend = FACES.selected(config).name
    return applied_calibration(config, backend).threshold - config.governance.face_match_margin


def match_table(table: pa.Table, query: np.ndarray, cut: float) -> FaceMatches:
    """The matches in one table with `faces` (and `target_face` where verify ran); `query`: unit rows."""
    found = FaceMatches()
    faces = table["faces"].combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(faces), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not lengths.sum():
        return found
    flat = pc.list_flatten(faces)
    dim = len(flat.field("embedding")[0])
    vectors = pc.list_flatten(flat.field("embedding")).to_numpy().reshape(-1, dim)
    parent = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(parent)) - (np.cumsum(lengths) - lengths)[parent]
    similarity = (vectors @ query.T.astype(np.float32)).max(axis=1)
    found.best = float(similarity.max())
    hits = np.flatnonzero(similarity >= cut)
    if not len(hits):
        return found
    target = _targets(table, flat, parent, lengths)
    identities, image_ids = table["identity"].to_pylist(), table["image_id"].to_pylist()
    for hit in hits:
        row, face = int(parent[hit]), int(position[hit])
        key = (identities[row], image_ids[row])
        if face == target[row]:
            found.targets.add(key)
        else:
            found.bystanders.setdefault(key, set()).add(face)
    return found


def _targets(table: pa.Table, flat: pa.StructArray, parent: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row, the face it is about: verify's `target_face`, else its largest face (-1: no face)."""
    boxes = pc.list_flatten(flat.field("box")).to_numpy().reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((-area, parent))  # per row, largest first
    starts = np.cumsum(lengths) - lengths
    largest = np.full(len(lengths), -1, np.int64)
    firsts = order[np.r_[True, parent[order][1:] != parent[order][:-1]]]
    largest[parent[firsts]] = firsts - starts[parent[firsts]]
    if "target_face" not in table.column_names:
        return largest
    chosen = table["target_face"].to_numpy(zero_copy_only=False)
    return np.where(np.isnan(chosen.astype(np.float64)), largest, np.nan_to_num(chosen)).astype(np.int64)


def match_tables(tables: Iterable[pa.Table], query: np.ndarray, cut: float) -> FaceMatches:
    found = FaceMatches()
    for table in tables:
        found.add(match_table(table, query, cut))
    return found.settle()


def verified_tables(run: RunDir, identities: Iterable[str]) -> Iterable[pa.Table]:
    """Every row verify judged, kept or dropped, with its faces: where stored faces are looked for."""
    for slug in identities:
        rel = part_path(VerifyStage.name, slug)
        if run.exists(rel):
            yield run.read_table(rel, COLUMNS)
