"""A realistic `local` crawl tree: real photos of each identity from tests/data/faces plus generated bad files."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageOps

from tests.conftest import image_bytes

# name of the generated file -> (stage that drops it, reason)
BAD_FILES = {
    "tiny.jpg": ("filter", "low_resolution"),
    "bomb.png": ("filter", "decompression_bomb"),
    "panorama.jpg": ("filter", "extreme_aspect_ratio"),
    "truncated.jpg": ("filter", "decode_error"),
    "notes.jpg": ("crawl", "not_an_image"),
    "empty.jpg": ("crawl", "zero_bytes"),
    "zz-copy-of-first.jpg": ("crawl", "duplicate"),
}


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares a huge size (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rotated_jpeg() -> bytes:
    """Stored 1000x600 with EXIF orientation 6: a viewer shows it 600x1000 (portrait)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes((1000, 600), exif=exif.tobytes())


def upright_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def build_tree(root: Path, faces: dict, identities: list[str]) -> dict[str, dict[str, str]]:
    """Folders named by identity; returns, per identity, file name -> expected outcome
    (`ok`, or the reason of the stage that drops it), for a run with a face size limit below
    every labelled face (each labelled photo shows one clear face)."""
    expected: dict[str, dict[str, str]] = {}
    for identity in identities:
        folder = root / identity
        folder.mkdir(parents=True)
        outcomes = {}
        photos = faces["identities"][identity]
        for photo in photos:
            shutil.copy(faces["images"] / photo, folder / photo)
            outcomes[photo] = "ok" if min(upright_size(folder / photo)) >= 512 else "low_resolution"
        big = max(photos, key=lambda p: min(upright_size(folder / p)))
        (folder / "tiny.jpg").write_bytes(image_bytes((200, 150)))
        (folder / "bomb.png").write_bytes(png_declaring(30000, 30000))
        (folder / "panorama.jpg").write_bytes(image_bytes((3000, 600)))
        whole = (folder / big).read_bytes()
        (folder / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])
        (folder / "notes.jpg").write_text("<html>not an image</html>")
        (folder / "empty.jpg").write_bytes(b"")
        shutil.copy(folder / min(photos), folder / "zz-copy-of-first.jpg")
        (folder / "rotated.jpg").write_bytes(rotated_jpeg())
        outcomes.update({name: reason for name, (_, reason) in BAD_FILES.items()}, **{"rotated.jpg": "no_face"})
        expected[identity] = outcomes
    return expected
