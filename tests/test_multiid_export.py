"""The multiid export's reference pools (pipeline/export/multiid.py) on real photos: a resized copy of a group photo
kept under the other person (another image_id, and duplicate groups are made per identity) is no reference for
that photo. The export's end-to-end run is in tests/test_hygiene.py."""

from __future__ import annotations

import hashlib
import io

import imagehash
from PIL import Image

from benchmarks.fixtures.group_photos import side_by_side
from pipeline.core.config import FaceSection, FilterSection, VerifySection
from pipeline.export.multiid import near_copies, pools
from stages.imaging import decode_for_detection
from tests.conftest import FACES

KATY, SCARLETT = ["img26.jpg", "img27.jpg"], ["img8.jpg", "img9.jpg"]  # single portraits (identities.json)


def phash(data: bytes) -> str:
    """The photo's phash as filter stores it: of the image it decodes for detection."""
    image, _ = decode_for_detection(data, FilterSection().max_pixels, FaceSection().max_side)
    return str(imagehash.phash(image))


def thumbnail(data: bytes, scale: float = 0.5) -> bytes:
    """The photo as a crawl finds it elsewhere: smaller and re-encoded."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def reference(identity: str, data: bytes) -> dict:
    image_id = hashlib.sha256(data).hexdigest()
    return {"identity": identity, "image_id": image_id, "dup_group": image_id, "phash": phash(data),
            "file": f"ref/{identity}/{image_id}.jpg"}


def test_a_resized_copy_under_the_other_person_is_left_out_of_their_pool() -> None:
    group = side_by_side(["img43.jpg", "img50.jpg"])  # Katy Perry left, Scarlett Johansson right
    copy = thumbnail(group)
    portraits = {who: [(FACES / "images" / name).read_bytes() for name in names]
                 for who, names in (("katy_perry", KATY), ("scarlett_johansson", SCARLETT))}
    held = {"katy_perry": group, "scarlett_johansson": copy}  # the photo under Katy, its thumbnail under Scarlett
    refs = {who: [reference(who, held[who]), *(reference(who, photo) for photo in photos)]
            for who, photos in portraits.items()}
    sample = {"image_id": refs["katy_perry"][0]["image_id"], "name": ["katy_perry", "scarlett_johansson", None],
              "phash": phash(group)}
    assert refs["scarlett_johansson"][0]["image_id"] != sample["image_id"]  # only its phash tells it is this photo
    found = pools(sample, refs, VerifySection().dup_hamming)
    assert found == {who: [ref["file"] for ref in refs[who][1:]] for who in refs}  # the unnamed face has no pool


def test_near_copies_compare_phash_bits_and_never_a_missing_hash() -> None:
    assert near_copies("ffff000000000000", ["ffff000000000003", "ffff00000000000f", None], 2).tolist() == [
        True, False, False]
    assert near_copies(None, ["ffff000000000000"], 64).tolist() == [False]
