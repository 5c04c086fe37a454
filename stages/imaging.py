"""Image bytes: format sniffing, header probing and safe decoding, shared by the stages (Pillow)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps

# Pillow's bomb check reads a process-wide limit; ours is per config and checked on the header
# before every decode (`probe`), which is also safe when download threads share the process.
Image.MAX_IMAGE_PIXELS = None

EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # width and height swap once the photo is shown upright
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


class ImageRejected(Exception):
    """An image that a stage must drop; `reason` is the row's reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as shown upright, after EXIF orientation
    height: int
    orientation: int


def _open(data: bytes) -> Image.Image:
    """Open lazily: Pillow reads the header only until pixels are asked for."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for hostile bytes; all mean the same here
        raise ImageRejected("not_an_image", f"{type(exc).__name__}: {exc}") from exc


def sniff_format(data: bytes) -> str | None:
    """The image format read from the bytes themselves, or None when they are not an image."""
    try:
        with _open(data) as image:
            return image.format
    except ImageRejected:
        return None


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Size and orientation from the header, without decoding the pixels."""
    with _open(data) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:  # a broken EXIF block is no reason to lose the photo
            orientation = 1
        if orientation in ROTATED_ORIENTATIONS:
            width, height = height, width
        return ImageHeader(image.format or "UNKNOWN", width, height, orientation)


def decode_upright(data: bytes, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """Full decode in RGB whatever the source mode (CMYK, 16-bit, palette, alpha), EXIF applied.

    With `at_least`, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay at
    least that large (libjpeg scales while decoding: several times faster on big photos).
    """
    probe(data, max_pixels)
    with _open(data) as image:
        try:
            if at_least:
                image.draft("RGB", (at_least, at_least))
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greys: scale, don't clip
                upright = upright.point(lambda value: value / 256).convert("L")
            return upright.convert("RGB")
        except Exception as exc:
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from exc


def shrink(image: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """The image with its long side at most `max_side`, and the factor back to full size."""
    scale = max(image.size) / max_side
    if scale <= 1:
        return image, 1.0
    size = (max(1, round(image.width / scale)), max(1, round(image.height / scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0), scale


def decode_for_detection(data: bytes, max_pixels: int, max_side: int) -> tuple[Image.Image, float]:
    """The upright image with its long side at most `max_side`, and the factor back to full size."""
    header = probe(data, max_pixels)
    small, _ = shrink(decode_upright(data, max_pixels, at_least=max_side), max_side)
    return small, header.width / small.width
