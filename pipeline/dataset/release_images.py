"""Image metadata out of a release: EXIF (GPS and maker notes inside it), XMP, IPTC, comments and text chunks
go; the ICC profile stays (the colours mean nothing without it).

JPEG, PNG and WebP are containers of tagged segments, so the metadata segments are dropped and the image data
is copied as it is: the pixels are the shards' pixels, and a row costs microseconds. Pillow could only remove
metadata by decoding and encoding again, which changes a JPEG's pixels and costs milliseconds a row; it is the
fallback for a file these walkers cannot follow (the encoder writes no metadata but the profile).
"""

from __future__ import annotations

import io
import struct

from PIL import Image

JPEG_SOI, JPEG_SOS = b"\xff\xd8", 0xDA
JPEG_APP0, JPEG_APP2, JPEG_APP14, JPEG_COM = 0xE0, 0xE2, 0xEE, 0xFE
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn: markers without a length
ICC_TAG = b"ICC_PROFILE\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG chunks a decoder needs or that describe colour; everything else (tEXt, zTXt, iTXt with XMP, eXIf, tIME,
# private chunks) is left out.
PNG_KEPT = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"bKGD", b"pHYs"}
WEBP_DROPPED = {b"EXIF", b"XMP "}
WEBP_EXIF_XMP_FLAGS = 0x08 | 0x04  # VP8X flags that announce EXIF and XMP chunks


def strip_metadata(data: bytes) -> bytes:
    """The image with no metadata but its ICC profile; malformed containers are encoded again by Pillow."""
    try:
        if data.startswith(JPEG_SOI):
            return _jpeg(data)
        if data.startswith(PNG_SIGNATURE):
            return _png(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (ValueError, struct.error):
        pass
    return _encoded_again(data)


def _jpeg(data: bytes) -> bytes:
    """Segments up to the scan: JFIF (APP0), ICC (APP2 tagged ICC_PROFILE), Adobe (APP14: how the decoder reads
    the colour channels) and every non-APP marker stay; other APPn (EXIF, XMP, IPTC, maker notes) and COM go."""
    out, pos = [JPEG_SOI], 2
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in JPEG_STANDALONE:
            out.append(data[pos : pos + 2])
            pos += 2
            continue
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if end > len(data):
            raise ValueError("JPEG segment past the end")
        if marker == JPEG_SOS:
            out.append(data[pos:])  # the entropy-coded data and everything after it, as stored
            return b"".join(out)
        if _jpeg_kept(marker, data[pos + 4 : pos + 4 + len(ICC_TAG)]):
            out.append(data[pos:end])
        pos = end


def _jpeg_kept(marker: int, head: bytes) -> bool:
    if marker == JPEG_APP2:
        return head == ICC_TAG
    return marker in (JPEG_APP0, JPEG_APP14) or not (0xE0 <= marker <= 0xEF or marker == JPEG_COM)


def _png(data: bytes) -> bytes:
    out, pos = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length  # length, type, data, CRC
        if end > len(data):
            raise ValueError("PNG chunk past the end")
        if kind in PNG_KEPT:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            return b"".join(out)
    raise ValueError("PNG without IEND")


def _webp(data: bytes) -> bytes:
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        kind, size = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + size + (size & 1)  # chunks are padded to an even size
        if end > len(data):
            raise ValueError("WebP chunk past the end")
        chunk = data[pos:end]
        if kind == b"VP8X":  # the extended header says which optional chunks follow
            flags = chunk[8] & ~WEBP_EXIF_XMP_FLAGS
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind not in WEBP_DROPPED:
            chunks.append(chunk)
        pos = end
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _encoded_again(data: bytes) -> bytes:
    """A fresh file of the decoded pixels, its format and ICC profile kept, nothing else."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        fmt = image.format if image.format in ("JPEG", "PNG", "WEBP") else "PNG"
        options = {"icc_profile": image.info["icc_profile"]} if image.info.get("icc_profile") else {}
        if fmt == "JPEG":
            options["quality"] = 95
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
    return buffer.getvalue()
