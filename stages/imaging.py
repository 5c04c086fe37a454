"""Image bytes: format sniffing, header probing and safe decoding to upright sRGB, shared by the stages (Pillow).

Every decode for a model, for crop output or for display goes through `decode_upright`, so every source
mode (1, L, LA, P, PA, RGBA, CMYK, YCbCr, LAB, I;16, I, F) comes out as 8-bit RGB in sRGB. An embedded ICC profile (Display P3 from phones, Adobe RGB from
cameras, a press profile on CMYK) is converted with littleCMS (Pillow's ImageCms); a profile that is
broken or made for another colour space is ignored, and the pixels converted as Pillow does by default.

EXIF orientation 1..8 turns the photo upright. Any other value (0, 9, 128, 65535: legal SHORTs that
mean nothing) counts as 1, no rotation, in the header's size and in the decoded pixels alike.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import cache, lru_cache

from PIL import Image, ImageCms

from pipeline.core.reasons import DECODE_ERROR, DECOMPRESSION_BOMB, NOT_AN_IMAGE

# Pillow's bomb check reads a process-wide limit; ours is per config and checked on the header
# before every decode (`probe`), which is also safe when download threads share the process.
Image.MAX_IMAGE_PIXELS = None
PILLOW_MAX_PIXELS = 89_478_485  # Pillow's own bomb limit: for images with no configured one (crops, thumbnails)

EXIF_ORIENTATION = 0x0112
# orientation -> the transposition that shows the photo upright (ImageOps.exif_transpose's table), kept
# here so the header's size and the decoded pixels follow one reading of the tag
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # width and height swap once the photo is shown upright
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
GREY_MODES = {"1", "L", "LA", "F", "I", "I;16", "I;16B", "I;16L", "I;16N"}
WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greys: scaled to 8 bits, not clipped


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
    orientation: int  # 1..8: the EXIF orientation applied (1 when absent or out of range)
    icc_profile: str | None  # description of the ICC profile the pixels convert to sRGB from; None: none usable


def _open(data: bytes) -> Image.Image:
    """Open lazily: Pillow reads the header only until pixels are asked for."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for hostile bytes; all mean the same here
        raise ImageRejected(NOT_AN_IMAGE, f"{type(exc).__name__}: {exc}") from exc


def sniff_format(data: bytes) -> str | None:
    """The image format read from the bytes themselves, or None when they are not an image."""
    try:
        with _open(data) as image:
            return image.format
    except ImageRejected:
        return None


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Size, orientation and colour profile from the header, without decoding the pixels."""
    with _open(data) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(DECOMPRESSION_BOMB, f"{width}x{height} exceeds {max_pixels} pixels")
        orientation = _orientation(image)
        if orientation in ROTATED_ORIENTATIONS:
            width, height = height, width
        conversion = _srgb_conversion(image)
        description = conversion[1] if conversion else None
        return ImageHeader(image.format or "UNKNOWN", width, height, orientation, description)


def decode_upright(data: bytes, max_pixels: int, at_least: int | None = None) -> Image.Image:
    """Full decode to RGB in sRGB whatever the source mode and profile, EXIF orientation applied.

    With `at_least`, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale whose sides stay at
    least that large (libjpeg scales while decoding: several times faster on big photos).
    """
    header = probe(data, max_pixels)
    with _open(data) as image:
        try:
            if at_least:
                image.draft("RGB", (at_least, at_least))
            rgb = _to_srgb(image)
        except Exception as exc:  # truncated or corrupt pixel data: Pillow's errors vary by format
            raise ImageRejected(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from exc
    method = UPRIGHT.get(header.orientation)
    return rgb if method is None else rgb.transpose(method)


def _to_srgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB in sRGB: through its embedded ICC profile where that one is usable."""
    flat = _flattened(image)
    conversion = _srgb_conversion(image)
    rgb = conversion[0].apply(flat) if conversion else flat.convert("RGB")
    rgb.info.pop("icc_profile", None)  # sRGB now: an encoder must not tag these pixels with the source's profile
    return rgb


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (XMP's when EXIF has none, as Pillow merges them); 1 when absent or not 1..8."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (SyntaxError, struct.error, ValueError, OSError):  # a broken EXIF block: no reason to lose the photo
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def _profile_mode(mode: str) -> str:
    """The mode whose pixels an ICC profile of an image in `mode` describes: L, RGB, CMYK or LAB."""
    if mode in GREY_MODES:
        return "L"
    return mode if mode in ("CMYK", "LAB") else "RGB"


def _flattened(image: Image.Image) -> Image.Image:
    """The pixels in their profile's mode (`_profile_mode`): alpha dropped, palettes expanded, wide greys scaled."""
    if image.mode in WIDE_GREY_MODES:
        image = image.point(lambda value: value / 256)
    target = _profile_mode(image.mode)
    return image if image.mode == target else image.convert(target)


def _srgb_conversion(image: Image.Image) -> tuple[ImageCms.ImageCmsTransform, str] | None:
    """The transform from the image's embedded profile to sRGB, and the profile's description; None
    without a profile, or with one littleCMS cannot read or use for these pixels."""
    icc = image.info.get("icc_profile")
    return _profile_transform(icc, _profile_mode(image.mode)) if isinstance(icc, bytes) and icc else None


@lru_cache(maxsize=32)  # a crawl's photos share a few profiles (one per phone or camera model)
def _profile_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform, str] | None:
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # NOCACHE: littleCMS's one-pixel cache is not safe when threads share a transform
        transform = ImageCms.buildTransform(profile, _srgb(), mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except (OSError, ImageCms.PyCMSError):  # unreadable, or made for another colour space than the pixels'
        return None
    return transform, profile.profile.profile_description or ""


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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
