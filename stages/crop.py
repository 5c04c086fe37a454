"""Crop stage: a person-centred square around the target face, resized to `crop.size` and encoded.

The square is `crop.scale` times the face box's longer side, capped so the face box covers at least
`crop.face_share` of it (the paper: more than 10%). At the image border it either shifts (and, if
wider than the image, shrinks) to stay inside the photo, or stays centred and is padded with black.
Every face of the row is mapped into crop pixels, so captioning and training need no source image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.core.config import CropSection
from pipeline.core.reasons import CROP_TOO_SMALL, CROP_UNREADABLE
from pipeline.core.schema import CROP
from stages.base import Row, RowStage, drop, keep
from stages.imaging import PILLOW_MAX_PIXELS, ImageRejected, decode_upright

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass(frozen=True)
class Square:
    """The crop in upright source pixels; it may reach past the image (padding)."""

    x0: int
    y0: int
    side: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)

    def padding(self, width: int, height: int) -> float:
        """Share of the square outside a width x height image."""
        inside_x = min(self.x0 + self.side, width) - max(self.x0, 0)
        inside_y = min(self.y0 + self.side, height) - max(self.y0, 0)
        return 1.0 - max(inside_x, 0) * max(inside_y, 0) / self.side**2

    def to_crop(self, points: Sequence[float], size: int) -> list[float]:
        """Flat (x, y, x, y, ...) source points in pixels of the crop resized to size x size."""
        factor = size / self.side
        return [(value - (self.x0 if k % 2 == 0 else self.y0)) * factor for k, value in enumerate(points)]


def crop_square(face: Sequence[float], width: int, height: int, settings: CropSection) -> Square:
    """The square for a face box [x0, y0, x1, y1]; the whole face box always lies inside it."""
    fx0, fy0, fx1, fy1 = face
    least = max(math.ceil(fx1) - math.floor(fx0), math.ceil(fy1) - math.floor(fy0), 1)
    area = max((fx1 - fx0) * (fy1 - fy0), 1.0)
    wanted = min(settings.scale * max(fx1 - fx0, fy1 - fy0), math.sqrt(area / settings.face_share))
    inside = settings.border == "shift"
    if inside:
        wanted = min(wanted, width, height)  # smaller, so tighter: the face share only grows
    side = max(least, math.floor(wanted))  # floor keeps the share at or above face_share
    x0 = _place(fx0, fx1, side, width, inside)
    y0 = _place(fy0, fy1, side, height, inside)
    return Square(x0, y0, side)


def _place(low: float, high: float, side: int, extent: int, inside: bool) -> int:
    """Start of the square on one axis: centred on the face, inside [0, extent] when asked and possible.

    The face stays inside: side >= ceil(high) - floor(low) keeps the centred start within half a pixel of
    the face, and the clamps to the image only move it towards the face (which lies inside the image).
    """
    start = round((low + high) / 2 - side / 2)
    if not inside:
        return start
    # A square wider than the image on this axis (a face taller than the photo is wide) pads both sides.
    return min(max(start, 0), extent - side) if side <= extent else round((extent - side) / 2)


def face_share(face: Sequence[float], square: Square) -> float:
    return (face[2] - face[0]) * (face[3] - face[1]) / square.side**2


def render(image: Image.Image, square: Square, size: int) -> Image.Image:
    """The square cut out (black past the image) and resized; Pillow maps pixel edges exactly."""
    return image.crop(square.box).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(image: Image.Image, settings: CropSection) -> bytes:
    buffer = io.BytesIO()
    fmt = FORMATS[settings.format]
    image.save(buffer, fmt, **({} if fmt == "PNG" else {"quality": settings.quality}))
    return buffer.getvalue()


class CropStage(RowStage):
    name = "crop"
    sections = ("crop",)
    requires = ("raw_path", "width", "height", "faces", "target_face")
    produces = CROP
    reuses_rows = True  # row by row: rows judged before are reused where a curator changed others

    def process_row(self, row: Row) -> Row:
        settings, faces = self.config.crop, row["faces"]
        target = faces[row["target_face"]]["box"]
        square = crop_square(target, row["width"], row["height"], settings)
        if square.side * settings.max_upscale < settings.size:
            detail = f"source square {square.side} px, {settings.size} px wanted (max upscale {settings.max_upscale})"
            return drop(CROP_TOO_SMALL, detail)
        try:  # the image has exactly width x height pixels: that is its decompression-bomb bound
            image = decode_upright(self.run.read_bytes(row["raw_path"]), row["width"] * row["height"])
        except ImageRejected as rejected:
            return drop(rejected.reason, rejected.detail)
        return keep(
            crop_image=encode(render(image, square, settings.size), settings),
            crop_format=FORMATS[settings.format],
            crop_size=settings.size,
            crop_box=list(square.box),
            crop_faces=[self._mapped(face, square) for face in faces],
            crop_face_share=face_share(target, square),
            crop_padding=square.padding(row["width"], row["height"]),
        )

    def _mapped(self, face: Row, square: Square) -> Row:
        size = self.config.crop.size
        return {"box": square.to_crop(face["box"], size), "landmarks": square.to_crop(face["landmarks"], size)}


def decode_crop(data: bytes) -> np.ndarray:
    """A stored crop as an HxWx3 uint8 RGB array in sRGB (writable: torch warns about read-only arrays).

    Raises ImageRejected (`crop_unreadable`) for bytes that do not decode: only storage gone wrong does that.
    """
    try:
        return np.array(decode_upright(data, PILLOW_MAX_PIXELS))
    except ImageRejected as rejected:
        raise ImageRejected(CROP_UNREADABLE, f"{rejected.reason}: {rejected.detail}") from rejected


def target_crop_box(row: Row) -> list[float]:
    """The target face's box in crop pixels."""
    return row["crop_faces"][row["target_face"]]["box"]
