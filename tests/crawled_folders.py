"""Realistic crawled folders built from the shared labelled faces, as the rows verify reads.

A folder for an identity holds: its labelled photos, a resized re-encoded copy of one of them,
wrong search hits (photos of other identities, 40% of the single-person photos), three group
photos (the corpus's two, and insightface's `t1.jpg`: the Friends cast, Jennifer Aniston at the
left) and two rendered scenes without a face. Faces are detected and embedded once per photo
(`Corpus`) the way the face filter does it (upright image, long side shrunk to 1280, every
detected face kept: HOG at upsample 0 finds faces from ~80 px, harder for verify than the paper's
256 px); images without a face are left out, as the filter drops them. Shared by
tests/test_verify.py and benchmarks/verify_quality.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageOps

from pipeline.core.schema import FACE_EVIDENCE, OK, ROW_KEYS, extend
from stages.faces import FaceBackend

FACES = Path(__file__).resolve().parent / "data" / "faces"
ROWS = extend(ROW_KEYS, FACE_EVIDENCE)
MAX_SIDE = 1280  # the face filter's default detection size
# every identity with at least 3 labelled photos (verify.min_images); the 2-photo ones cannot pass it
QUALITY_IDENTITIES = (
    "angelina_jolie",
    "katy_perry",
    "scarlett_johansson",
    "jennifer_aniston",
    "mark_zuckerberg",
    "jack_dorsey",
    "matt_damon",
    "leonardo_dicaprio",
    "george_clooney",
    "elon_musk",
)
# Group photos: a point inside each identity's face (stored-image pixels), checked by eye.
GROUP_FACES = {
    "couple.jpg": {"angelina_jolie": (735, 950)},
    "selfie-many-people.jpg": {"angelina_jolie": (170, 376)},
    "t1.jpg": {"jennifer_aniston": (117, 336)},
}
FRIENDS = "t1.jpg"  # six people, shipped with insightface


@dataclass(frozen=True)
class Photo:
    name: str
    image_id: str
    phash: str
    faces: list[dict]  # FACE structs, boxes in stored-image pixels


class Corpus:
    """Photos analysed once by a face backend: the expensive part, shared by all folders."""

    def __init__(self, backend: FaceBackend, root: Path = FACES) -> None:
        self.backend = backend
        self.models = json.dumps(backend.versions(), sort_keys=True)
        self.labels = json.loads((root / "identities.json").read_text())
        self.images = root / "images"
        self._photos: dict[str, Photo] = {}

    @property
    def analysed(self) -> int:
        return len(self._photos)

    def labelled(self, name: str) -> Photo:
        return self.photo(name, (self.images / name).read_bytes())

    def group(self, name: str) -> Photo:
        if name != FRIENDS:
            return self.labelled(name)
        spec = importlib.util.find_spec("insightface")
        return self.photo(name, (Path(spec.origin).parent / "data" / "images" / FRIENDS).read_bytes())

    def photo(self, name: str, data: bytes) -> Photo:
        if name not in self._photos:
            self._photos[name] = self._analyse(name, data)
        return self._photos[name]

    def _analyse(self, name: str, data: bytes) -> Photo:
        with Image.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened).convert("RGB")
        scale = min(1.0, MAX_SIDE / max(upright.size))
        small = upright.resize((round(upright.width * scale), round(upright.height * scale))) if scale < 1 else upright
        faces = self.backend.analyze([np.asarray(small)])[0]
        structs = [
            {
                "box": [v / scale for v in face.box],
                "landmarks": (face.landmarks / scale).ravel().tolist(),
                "score": face.score,
                "embedding": face.embedding.tolist(),
                "embedding_norm": face.embedding_norm,
            }
            for face in faces
        ]
        return Photo(name, hashlib.sha256(data).hexdigest(), str(imagehash.phash(upright)), structs)

    def row(self, identity: str, photo: Photo) -> dict:
        return {
            "identity": identity,
            "image_id": photo.image_id,
            "status": OK,
            "faces": photo.faces,
            "num_detected": len(photo.faces),
            "phash": photo.phash,
            "face_backend": self.backend.name,
            "face_models": self.models,
        }


@dataclass
class Folder:
    identity: str
    rows: pa.Table  # what verify gets: the folder's images that have a face
    names: dict[str, str] = field(default_factory=dict)  # image_id -> file name, every image of the folder
    positives: set[str] = field(default_factory=set)  # image_ids that show the identity
    group_faces: dict[str, int] = field(default_factory=dict)  # group photo image_id -> the identity's face
    copies: dict[str, str] = field(default_factory=dict)  # copy's image_id -> original's image_id


def build_folder(corpus: Corpus, identity: str) -> Folder:
    own = corpus.labels["identities"][identity]
    # 2 wrong hits per 3 own photos: 40% of the single-person photos are someone else
    wrong = wrong_hits(corpus.labels["identities"], identity, math.ceil(len(own) * 2 / 3))
    groups = {name: corpus.group(name) for name in GROUP_FACES}
    original = max(own, key=lambda name: (pixels(corpus.images / name), name))
    copy = corpus.photo(f"copy-of-{original}", reencoded(corpus.images / original))
    scenes = [corpus.photo(f"scene{k}.png", scene(k)) for k in range(2)]
    photos = [corpus.labelled(name) for name in own + wrong] + list(groups.values()) + [copy, *scenes]
    folder = Folder(identity, pa.Table.from_pylist([corpus.row(identity, p) for p in photos if p.faces], schema=ROWS))
    folder.names = {p.image_id: p.name for p in photos}
    folder.positives = {corpus.labelled(n).image_id for n in own} | {copy.image_id}
    folder.copies = {copy.image_id: corpus.labelled(original).image_id}
    for name, points in GROUP_FACES.items():
        if identity in points:
            photo = groups[name]
            folder.positives.add(photo.image_id)
            folder.group_faces[photo.image_id] = face_at(photo, points[identity])
    return folder


def wrong_hits(identities: dict[str, list[str]], identity: str, count: int) -> list[str]:
    """`count` photos of other identities, one identity after another (rotated per folder) so hits vary."""
    others = sorted(set(identities) - {identity})
    start = sorted(identities).index(identity) % len(others)
    others = others[start:] + others[:start]
    rounds = max(map(len, identities.values()))
    pool = [identities[other][k] for k in range(rounds) for other in others if k < len(identities[other])]
    return pool[:count]


def pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.width * image.height


def reencoded(path: Path) -> bytes:
    """The photo as a search engine often returns it again: 60% size, JPEG quality 70."""
    with Image.open(path) as opened:
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    buffer = io.BytesIO()
    upright.resize((upright.width * 3 // 5, upright.height * 3 // 5)).save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def scene(seed: int) -> bytes:
    """A rendered landscape with shapes: an image without a face."""
    rng = np.random.default_rng(seed)
    image = Image.linear_gradient("L").resize((900, 600)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, 800), rng.integers(0, 500)
        w, h = rng.integers(40, 300, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def face_at(photo: Photo, point: tuple[float, float]) -> int:
    """Index of the face whose box holds `point`."""
    x, y = point
    boxes = [face["box"] for face in photo.faces]
    hits = [k for k, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= x <= x1 and y0 <= y <= y1]
    if len(hits) != 1:
        raise AssertionError(f"{photo.name}: {len(hits)} faces at {point}")
    return hits[0]


@dataclass(frozen=True)
class Score:
    identity: str
    photos: int  # images showing the identity that reached verify
    wrong: int  # images not showing it that reached verify
    kept: int
    true_kept: int
    purity: float
    competing: bool
    right_faces: int  # kept group photos whose target face is the identity's
    group_photos: int  # group photos showing the identity

    @property
    def precision(self) -> float:
        return self.true_kept / self.kept if self.kept else float("nan")

    @property
    def recall(self) -> float:
        return self.true_kept / self.photos if self.photos else float("nan")


def score(folder: Folder, verified: pa.Table) -> Score:
    rows = {row["image_id"]: row for row in verified.to_pylist()}
    kept = {image_id for image_id, row in rows.items() if row["status"] == OK}
    positives = folder.positives & set(rows)
    right = sum(rows[i]["target_face"] == face for i, face in folder.group_faces.items() if i in kept)
    first = verified.filter(pc.is_valid(verified["identity_purity"])).slice(0, 1).to_pylist()
    return Score(
        identity=folder.identity,
        photos=len(positives),
        wrong=len(rows) - len(positives),
        kept=len(kept),
        true_kept=len(kept & positives),
        purity=first[0]["identity_purity"] if first else float("nan"),
        competing=bool(first[0]["identity_competing"]) if first else False,
        right_faces=right,
        group_photos=len(folder.group_faces),
    )
