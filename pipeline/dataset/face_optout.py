"""Faces refused at the shard step: `face:` opt-out entries and the faceprints of face takedowns.

Every row the shard step writes is matched, by its stored face embeddings (filter computed them
once; no model runs here), against the listed faces (pipeline/dataset/face_match.py): a row whose
target matches drops (`opted_out_face`, or `taken_down` for a takedown's faceprint: a new photo of
someone who asked to be removed), and a matching bystander is blurred in the crop and mask or the
row dropped, as `governance.bystander` says. The listed photos are embedded once, on the driver,
and the vectors shipped to the shard tasks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.core import faceprints
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.optout import OptOutList
from pipeline.core.reasons import OPTED_OUT_FACE, TAKEN_DOWN
from pipeline.core.rundir import RunDir
from pipeline.dataset.blur import blur_table
from pipeline.dataset.face_match import COLUMNS, match_cut, match_table
from stages.faces import FACES
from stages.face_photos import listed_faces


@dataclass(frozen=True)
class FaceRefusals:
    queries: tuple[tuple[str, np.ndarray], ...] = ()  # (reason a matching target drops with, unit embeddings)
    cut: float = 1.0
    bystander: str = "blur"

    def __bool__(self) -> bool:
        return bool(self.queries)

    def apply(self, table: pa.Table) -> tuple[pa.Table, Counter[str]]:
        """The rows left, bystanders blurred, and the rows dropped by reason."""
        if not self or not table.num_rows or "faces" not in table.column_names:
            return table, Counter()
        faces = table.select([column for column in COLUMNS if column in table.column_names])
        gone: dict[tuple[str, str], str] = {}
        blurs: dict[tuple[str, str], set[int]] = {}
        for reason, query in self.queries:
            found = match_table(faces, query, self.cut).settle()
            for key in found.targets:
                gone.setdefault(key, reason)
            for key, matched in found.bystanders.items():
                if self.bystander == "drop":
                    gone.setdefault(key, reason)
                else:
                    blurs.setdefault(key, set()).update(matched)
        keys = zip(table["identity"].to_pylist(), table["image_id"].to_pylist(), strict=True)
        table = table.filter(pa.array([key not in gone for key in keys], pa.bool_()))
        return blur_table(table, blurs)[0], Counter(gone.values())


def face_refusals(run: RunDir, config: PipelineConfig, optout: OptOutList) -> FaceRefusals:
    """What the shard step refuses by face in this run: the opt-out lists' faces and the takedowns' faceprints."""
    queries = []
    listed = listed_faces(config, optout.faces)
    if listed is not None:
        queries.append((OPTED_OUT_FACE, listed))
    requested = faceprints.load_all(run)
    if requested is not None:
        queries.append((TAKEN_DOWN, requested))
    dim = FACES.selected(config).embedding_dim
    for reason, vectors in queries:
        if vectors.shape[1] != dim:  # a stored .npy or faceprint of another backend: comparing would mean nothing
            raise UserError(f"{'face: opt-out entries' if reason == OPTED_OUT_FACE else 'face takedowns'} hold "
                            f"{vectors.shape[1]}-d embeddings; the run's face backend ({config.face.backend}) "
                            f"stores {dim}-d", "list photos instead of .npy files (they are embedded with the run's "
                            "backend), or keep face.backend as it was when they were made")
    return FaceRefusals(tuple(queries), match_cut(config), config.governance.bystander)
