"""Thumbnails under report/thumbs/, made once and reused by later reports.

A file's name is the image_id, the kind of view and a digest of what is drawn on it (crop box,
face box, mask), so a re-run that changes a crop makes a new file instead of showing a stale one.
Every image mode is shown as a viewer shows it (RGB in sRGB, upright), so boxes draw in colour on
greys, palettes and CMYK alike. Undecodable bytes (truncated files, decompression bombs: the reasons
the filter dropped them) give no thumbnail: the page shows the reason instead of a broken image.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Callable

from PIL import Image, ImageDraw

from pipeline.core.rundir import RunDir
from stages.imaging import PILLOW_MAX_PIXELS, ImageRejected, decode_upright, probe

THUMBS = "report/thumbs"
SIDE = 224
FACE_MARGIN = 0.4  # a face chip shows the box plus this share of its side around it
HEX = re.compile(r"[0-9a-f]{16,64}")
BOX_COLOUR, MASK_COLOUR = (80, 255, 80), (255, 60, 160)


class Thumbs:
    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.cached = set(run.list_files(THUMBS))
        self.used: set[str] = set()

    def crop(self, row: dict) -> str | None:
        """The training crop, its person mask tinted and the target face boxed."""
        faces, target = row.get("crop_faces") or [], row.get("target_face")
        box = faces[target]["box"] if target is not None and target < len(faces) else None
        key = [row.get("crop_box"), box, hashlib.sha256(row.get("mask") or b"").hexdigest()]
        return self._thumb(row["image_id"], "crop", key, lambda: _crop_view(row, box))

    def raw(self, row: dict, box: list[float] | None) -> str | None:
        """The downloaded image as a viewer shows it, with `box` (upright pixels) drawn."""
        if not _inside(row.get("raw_path"), "raw/"):
            return None
        return self._thumb(row["image_id"], "raw", [box], lambda: _raw_view(self.run, row["raw_path"], box, None))

    def labelled(self, row: dict, faces: list[tuple[list[float], str]]) -> str | None:
        """The downloaded group photo with every labelled face boxed and named (docs/multi-identity.md)."""
        if not _inside(row.get("raw_path"), "raw/"):
            return None
        return self._thumb(row["image_id"], "people", [list(face) for face in faces],
                           lambda: _labelled_view(self.run, row["raw_path"], faces))

    def face(self, image_id: str, raw_path: str | None, box: list[float] | None) -> str | None:
        """The face verify compared, cut from the downloaded image with a margin."""
        if not _inside(raw_path, "raw/") or box is None:
            return None
        return self._thumb(image_id, "face", [box], lambda: _raw_view(self.run, raw_path, box, _grown(box)))

    def file(self, rel: str, box: object) -> str | None:
        """An image the generator wrote (a generated picture, a reference crop), keyed by its path."""
        if not _inside(rel, "generate/"):
            return None
        drawn = box if _is_box(box) else None

        def make() -> Image.Image | None:
            return _raw_view(self.run, rel, drawn, None) if self.run.exists(rel) else None

        return self._thumb(hashlib.sha256(rel.encode()).hexdigest(), "file", [drawn], make)

    def prune(self) -> None:
        """Thumbnails this report no longer shows: the folder stays the size of one report."""
        for name in self.cached - self.used:
            self.run.delete(f"{THUMBS}/{name}")

    def _thumb(self, image_id: str, kind: str, drawn: list, make: Callable[[], Image.Image | None]) -> str | None:
        stem = image_id if HEX.fullmatch(image_id) else hashlib.sha256(image_id.encode()).hexdigest()
        digest = hashlib.sha256(json.dumps(drawn).encode()).hexdigest()[:10]
        name = f"{stem}-{kind}-{digest}.jpg"
        if name not in self.cached:
            image = make()
            if image is None:
                return None
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=82)
            self.run.write_bytes(f"{THUMBS}/{name}", buffer.getvalue())
            self.cached.add(name)
        self.used.add(name)
        return f"thumbs/{name}"


def _inside(path: str | None, folder: str) -> bool:
    """A path from a table or a record stays inside its folder of the run."""
    return bool(path) and path.startswith(folder) and ".." not in path.split("/")


def _is_box(value: object) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


def _grown(box: list[float]) -> list[float]:
    pad = FACE_MARGIN * max(box[2] - box[0], box[3] - box[1])
    return [box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad]


def _decode(data: bytes, region_side: float | None = None) -> tuple[Image.Image, float] | None:
    """Upright RGB in sRGB (any mode, EXIF and ICC profile applied), reduced while decoding to what a
    thumbnail of `region_side` source pixels (default: the whole image) needs, and its scale to the full
    upright size."""
    try:
        header = probe(data, PILLOW_MAX_PIXELS)
        full = max(header.width, header.height)
        at_least = math.ceil(min(header.width, header.height) * SIDE / (region_side or full))
        image = decode_upright(data, PILLOW_MAX_PIXELS, at_least=max(at_least, 1))
    except ImageRejected:
        return None
    return image, max(image.size) / full


def _raw_view(run: RunDir, raw_path: str, box: list[float] | None, region: list[float] | None) -> Image.Image | None:
    data = run.read_bytes(raw_path)
    decoded = _decode(data, max(region[2] - region[0], 1) if region else None)
    if decoded is None:
        return None
    image, scale = decoded
    if box is not None:
        ImageDraw.Draw(image).rectangle([v * scale for v in box], outline=BOX_COLOUR, width=max(2, image.width // 150))
    if region is not None:
        image = image.crop(tuple(int(v * scale) for v in region))  # outside the image fills black
    image.thumbnail((SIDE, SIDE))
    return image


def _labelled_view(run: RunDir, raw_path: str, faces: list[tuple[list[float], str]]) -> Image.Image | None:
    """Up to twice the thumbnail's side, so the names stay legible."""
    decoded = _decode(run.read_bytes(raw_path))
    if decoded is None:
        return None
    image, scale = decoded
    width = image.width
    image.thumbnail((2 * SIDE, 2 * SIDE))
    scale *= image.width / width
    draw = ImageDraw.Draw(image)
    for box, name in faces:
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=2)
        left = min(x0 + 2, image.width - draw.textlength(name) - 2)  # a name near the right edge stays whole
        draw.text((max(left, 0), min(y1 + 2, image.height - 12)), name, fill=BOX_COLOUR)
    return image


def _crop_view(row: dict, box: list[float] | None) -> Image.Image | None:
    decoded = _decode(row["crop_image"])
    if decoded is None:
        return None
    image, _ = decoded
    image = image.resize((SIDE, SIDE))
    if row.get("mask"):
        mask = Image.open(io.BytesIO(row["mask"])).convert("L").resize((SIDE, SIDE), Image.NEAREST)
        tint = Image.new("RGB", image.size, MASK_COLOUR)
        image = Image.composite(Image.blend(image, tint, 0.35), image, mask)
    if box is not None:
        scale = SIDE / (row.get("crop_size") or SIDE)
        ImageDraw.Draw(image).rectangle([v * scale for v in box], outline=BOX_COLOUR, width=2)
    return image

