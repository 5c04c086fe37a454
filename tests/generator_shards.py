"""A minimal shards directory of real face crops, as the shard stage writes it, without running the pipeline.

Real photos from tests/data/faces are cropped square around their largest face, and the crop is detected
and embedded again, so `faces` / `target_face` describe the crop the way the generator reads them.
The backend is dlib (HOG, 128-d) unless another is given, e.g. insightface on a tiny random pack
for rows with 512-d ArcFace-shaped embeddings. Only the columns the generator reads are written,
with the shard schema's types.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.schema import CALIBRATION, FACE
from pipeline.dataset.shards import INDEX_SCHEMA
from stages.faces import Face, FaceBackend
from stages.faces.dlib_backend import DlibBackend

CROP_SIDE = 256
SHARD = "train-00000-of-00001.parquet"
SCHEMA = pa.schema([
    pa.field("identity", pa.string()), pa.field("image_id", pa.string()), pa.field("crop_image", pa.binary()),
    pa.field("faces", pa.list_(FACE)), pa.field("target_face", pa.int32()), pa.field("class_word", pa.string()),
    pa.field("dup_group", pa.string()), pa.field("face_backend", pa.string()), pa.field("calibration", CALIBRATION),
])


def square_crop(image: Image.Image, face: Face) -> Image.Image:
    """A square 2.5 face boxes wide, centred on the face and shifted inside the photo."""
    x0, y0, x1, y1 = face.box
    side = min(2.5 * max(x1 - x0, y1 - y0), *image.size)
    left = min(max((x0 + x1 - side) / 2, 0), image.width - side)
    top = min(max((y0 + y1 - side) / 2, 0), image.height - side)
    return image.crop((round(left), round(top), round(left + side), round(top + side))).resize((CROP_SIDE,) * 2)


def crop_row(backend: FaceBackend, identity: str, class_word: str, photo: Path) -> dict | None:
    image = Image.open(photo).convert("RGB")
    image.thumbnail((800, 800))
    faces = backend.detect([np.asarray(image)])[0]
    if not faces:
        return None
    crop = square_crop(image, max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    found = backend.analyze([np.asarray(crop)])[0]
    if not found:
        return None
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    target = max(range(len(found)), key=lambda k: found[k].box[2] - found[k].box[0])
    return {
        "identity": identity, "image_id": hashlib.sha256(data).hexdigest(), "crop_image": data,
        "faces": [{"box": list(f.box), "landmarks": f.landmarks.reshape(-1).tolist(), "score": f.score,
                   "embedding": f.embedding.tolist(), "embedding_norm": f.embedding_norm} for f in found],
        "target_face": target, "class_word": class_word, "dup_group": hashlib.sha256(data).hexdigest()[:16],
        "face_backend": backend.name, "calibration": asdict(type(backend).calibration),
    }


def write_shards(out: Path, faces: dict, people: dict[str, str], per_identity: int = 4,
                 backend: FaceBackend | None = None) -> Path:
    """`out/shards/` holding `per_identity` crops of each identity (slug -> class word), and its index."""
    backend = backend or DlibBackend(upsample=0)
    rows, index = [], []
    for identity, class_word in people.items():
        found = [row for photo in faces["identities"][identity]
                 if (row := crop_row(backend, identity, class_word, faces["images"] / photo))][:per_identity]
        index.append({"identity": identity, "shard": SHARD, "row_start": len(rows), "num_rows": len(found)})
        rows += found
    (out / "shards").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out / "shards" / SHARD)
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), out / "shards" / "_index.parquet")
    return out
