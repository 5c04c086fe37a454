"""Reference photos from the shards: an identity's rows, a sample of distinct photos, its centroid.

The sample follows the training rules (pipeline/core/pairs.py): in a generation every reference stands
for the others' target, so no two are more alike than `training.copy_paste_max`, and differing poses
are preferred.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.core.pairs import pose_weights, weighted_sample
from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import INDEX
from stages.imaging import PILLOW_MAX_PIXELS, ImageRejected, decode_upright

COLUMNS = ["identity", "image_id", "crop_image", "faces", "target_face", "class_word", "dup_group", "face_backend",
           "calibration"]


@dataclass(frozen=True)
class Reference:
    identity: str
    image_id: str
    dup_group: str | None
    crop_image: bytes  # the square crop, encoded
    embedding: np.ndarray  # the target face's L2-normalised embedding (shard's face backend)
    embedding_norm: float | None  # its raw vector's norm; None in shards written before filter stored it
    yaw: float | None = None  # the target face's yaw (degrees); None in shards written before filter measured it

    def image(self) -> Image.Image:
        """The crop as RGB in sRGB, whatever mode and profile it was stored with; one that does not decode
        is a user error naming the photo (the shards are damaged)."""
        try:
            return decode_upright(self.crop_image, PILLOW_MAX_PIXELS)
        except ImageRejected as rejected:
            raise UserError(f"the crop of {self.image_id} ({self.identity}) does not decode: {rejected.detail}",
                            "re-run crop and the later stages: python -m pipeline run --stage crop --force, "
                            "then python -m pipeline run --stage all") from rejected

    @property
    def raw_embedding(self) -> np.ndarray:
        """The backend's vector as it came out (insightface's `face.embedding`), which PhotoMaker v2 was trained on."""
        if self.embedding_norm is None:
            raise ValueError(f"reference {self.image_id} has no embedding_norm: its shard predates it")
        return self.embedding * np.float32(self.embedding_norm)


@dataclass(frozen=True)
class IdentityRows:
    identity: str
    class_word: str
    face_backend: str
    references: list[Reference]  # every row of the identity
    copy_paste_max: float | None = None  # the face backend's cut verify recorded (shards made before: None)

    def centroid(self) -> np.ndarray:
        mean = np.mean([ref.embedding for ref in self.references], axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


def load_identity(run: RunDir, identity: str) -> IdentityRows:
    if not run.exists(INDEX):
        raise UserError(f"no shards in {run.uri}", "run the pipeline first: python -m pipeline run --stage all")
    index = [row for row in run.read_table(INDEX).to_pylist() if row["identity"] == identity]
    if not index:
        raise UserError(f"identity {identity!r} is not in the shards of {run.uri}", "see shards/_index.parquet")
    entry = index[0]
    table = run.read_table(f"shards/{entry['shard']}")
    table = table.select([name for name in COLUMNS if name in table.schema.names])  # calibration: newer shards only
    table = table.slice(entry["row_start"], entry["num_rows"])
    rows = table.filter(pc.equal(table["identity"], identity)).to_pylist()
    refs = [Reference(identity, r["image_id"], r["dup_group"], r["crop_image"], *_target_embedding(r)) for r in rows]
    recorded = (rows[0].get("calibration") or {}).get("copy_paste_max")
    return IdentityRows(identity, rows[0]["class_word"], rows[0]["face_backend"], refs, recorded)


def _target_embedding(row: dict) -> tuple[np.ndarray, float | None, float | None]:
    """The target face's unit vector, raw norm and yaw (older shards lack the last two fields)."""
    face = row["faces"][row["target_face"]]
    vector = np.asarray(face["embedding"], dtype=np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12), face.get("embedding_norm"), face.get("yaw")


def sample_references(
    rows: IdentityRows, count: int, rng: random.Random, copy_paste_max: float | None = None
) -> list[Reference]:
    """`count` photos, one per near-duplicate group while groups last (copies add no new view of the face), none
    more alike than `copy_paste_max` to one chosen before, each drawn with weights growing with its yaw difference
    from the nearest chosen pose. When the rules leave too few, the too-alike photos fill the count, then copies."""
    if count > len(rows.references):
        raise UserError(f"identity {rows.identity!r} has {len(rows.references)} photos, {count} references asked",
                        f"pass --num-ref {len(rows.references)} or fewer")
    shuffled = rng.sample(rows.references, len(rows.references))
    seen: set[str] = set()
    distinct, copies = [], []
    for ref in shuffled:
        group = ref.dup_group or ref.image_id
        (copies if group in seen else distinct).append(ref)
        seen.add(group)
    chosen: list[Reference] = []
    while len(chosen) < count:
        fits = [ref for ref in distinct if _apart(ref, chosen, copy_paste_max)]
        if not fits:
            break
        pick = fits[weighted_sample(rng, _pose_weights(fits, chosen), 1)[0]]
        chosen.append(pick)
        distinct = [ref for ref in distinct if ref is not pick]  # by identity: numpy fields make == ambiguous
    return (chosen + distinct + copies)[:count]


def _apart(ref: Reference, chosen: list[Reference], copy_paste_max: float | None) -> bool:
    return copy_paste_max is None or all(float(ref.embedding @ other.embedding) <= copy_paste_max for other in chosen)


def _pose_weights(candidates: list[Reference], chosen: list[Reference]) -> list[float]:
    """Per candidate, the draw weight against the nearest pose already chosen (all 1 before the first pick)."""
    yaws = np.array([np.nan if ref.yaw is None else ref.yaw for ref in candidates], dtype=np.float64)
    if not chosen:
        return [1.0] * len(candidates)
    per_chosen = [pose_weights(yaws, np.nan if ref.yaw is None else ref.yaw) for ref in chosen]
    return np.min(per_chosen, axis=0).tolist()
