"""Any image a crawl meets: every Pillow mode, any EXIF orientation, ICC colour profiles, bomb-sized headers.

The property test pushes each generated image through the image-handling functions of every stage and
application, called directly (no Ray): filter's per-image path on the default profile's face backend,
safety's, crop's, segment's and caption's image loading, the report's thumbnails, export's row and
generate's reference loading. Each image ends as a row with a reason or goes through; nothing raises.
The CLI run over odd images (`write_odd_photos`) is the report's run: see
`test_report.py::test_odd_images_end_as_rows_and_in_the_report`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.reasons import CATALOGUE
from pipeline.core.rundir import RunDir
from pipeline.core.schema import NAMES, OK, PROVENANCE, extend
from pipeline.export import rows as export_rows
from pipeline.generator.references import Reference
from pipeline.report.thumbs import Thumbs
from stages.caption import CaptionCrop, CaptionStage
from stages.crop import CropStage
from stages.filter import FilterStage
from stages.imaging import PILLOW_MAX_PIXELS, decode_upright, probe
from stages.safety import SafetyScoresStage
from stages.segment import CheckedCrop, SegmentStage
from tests.conftest import FACES
from tests.local_tree import png_declaring

PHOTO = FACES / "images" / "img34.jpg"  # leonardo_dicaprio, 1600x1065, one large face, no colour profile
# real profiles from the labelled photos: Apple's wide-gamut "Display" (P3 primaries) and a camera's Adobe RGB
APPLE, APPLE_NAME = "couple.jpg", "Display"
ADOBE, ADOBE_NAME = "img39.jpg", "Adobe RGB (1998)"
# mode -> the formats Pillow writes it in (JPEG turns YCbCr into RGB, so YCbCr comes as TIFF)
FORMATS = {
    "1": ("PNG", "TIFF", "BMP", "GIF"),
    "L": ("PNG", "JPEG", "TIFF", "WEBP", "GIF"),
    "LA": ("PNG", "TIFF", "WEBP"),
    "P": ("PNG", "TIFF", "GIF", "BMP"),
    "PA": ("TIFF",),
    "RGB": ("PNG", "JPEG", "TIFF", "WEBP", "BMP"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
    "YCbCr": ("TIFF",),
    "LAB": ("TIFF",),
}
TAGGED = {"JPEG", "PNG", "TIFF", "WEBP"}  # formats that carry EXIF and ICC profiles
DECODED = (None, "no_face", "face_too_small")  # the filter's outcomes after a full decode


def profile_of(photo: str) -> bytes:
    """The ICC profile a labelled photo carries, as its camera or phone wrote it."""
    with Image.open(FACES / "images" / photo) as image:
        return image.info["icc_profile"]


def profiles() -> dict[str, bytes]:
    """Colour profiles to tag images with: Pillow's sRGB, the labelled photos' real ones, and bytes that are none."""
    return {"srgb": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), "apple": profile_of(APPLE),
            "adobe": profile_of(ADOBE), "broken": b"not a colour profile"}


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """An RGB image in `mode`; wide greys span their whole range, as a 16-bit scan does."""
    if mode in ("I;16", "I"):
        wide = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(wide if mode == "I;16" else wide.astype(np.int32))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str, orientation: int | None = None, icc: bytes | None = None) -> bytes:
    options: dict[str, object] = {"icc_profile": icc} if icc else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def small_photo() -> Image.Image:
    return Image.open(PHOTO).reduce(4)  # 400x266: the face is ~110 px


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(("photo", "name"), [(ADOBE, ADOBE_NAME), (APPLE, APPLE_NAME)])
def test_a_wide_gamut_photo_is_converted_to_srgb(photo: str, name: str) -> None:
    """The labelled photo as littleCMS converts it through its own profile, not as plain convert("RGB") shows it."""
    data = (FACES / "images" / photo).read_bytes()
    decoded = decode_upright(data, PILLOW_MAX_PIXELS)
    with Image.open(io.BytesIO(data)) as stored:
        reference = ImageCms.profileToProfile(stored, ImageCms.ImageCmsProfile(io.BytesIO(profile_of(photo))),
                                              ImageCms.createProfile("sRGB"))
        plain = pixels(stored)
    assert np.array_equal(pixels(decoded), pixels(reference))
    assert np.abs(pixels(decoded) - plain).mean() > 2  # what the plain conversion gets wrong: shifted colours
    assert probe(data, PILLOW_MAX_PIXELS).icc_profile == name
    assert "icc_profile" not in decoded.info  # sRGB now: a PNG crop of it must not carry the source's tag


@pytest.mark.parametrize(
    ("mode", "fmt", "icc", "description"),
    [
        ("RGB", "JPEG", "srgb", "sRGB built-in"),
        ("RGB", "PNG", "broken", None),
        ("CMYK", "JPEG", "adobe", None),  # an RGB profile on CMYK pixels: unusable
        ("L", "PNG", "adobe", None),
        ("RGB", "TIFF", None, None),
    ],
)
def test_a_neutral_or_unusable_profile_leaves_the_plain_conversion(mode: str, fmt: str, icc: str | None,
                                                                   description: str | None) -> None:
    image = in_mode(small_photo(), mode)
    data = encode(image, fmt, icc=profiles().get(icc))
    with Image.open(io.BytesIO(data)) as stored:
        plain = pixels(stored)
    decoded = decode_upright(data, PILLOW_MAX_PIXELS)
    assert np.abs(pixels(decoded) - plain).max() <= 1 and decoded.mode == "RGB"
    assert probe(data, PILLOW_MAX_PIXELS).icc_profile == description


@dataclass
class Pipeline:
    """One run directory and each stage's image handling, set up once (the face model loads once)."""

    run: RunDir
    config: PipelineConfig
    filter: FilterStage
    crop: CropStage
    segment: SegmentStage
    caption: CaptionStage
    safety: SafetyScoresStage
    thumbs: Thumbs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    run = RunDir(str(tmp_path_factory.mktemp("any-image")))
    # small limits, so small images reach every decode; crops small, so they are cheap
    config = load_config(resolve_profile(None), ["filter.min_short_side=1", "filter.min_face_size=16",
                                                 "crop.size=64", "crop.max_upscale=100000"])
    stage = FilterStage(config, run)
    stage.setup()
    return Pipeline(run, config, stage, CropStage(config, run), SegmentStage(config, run), CaptionStage(config, run),
                    SafetyScoresStage(config, run), Thumbs(run))


@st.composite
def any_image(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # a header claiming 10^8 to 10^10 pixels over a few bytes
        return png_declaring(draw(st.integers(10_000, 100_000)), draw(st.integers(10_000, 100_000)))
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    width = draw(st.integers(1, 700))
    size = (width, draw(st.integers(max(1, width // 4), min(700, width * 4))))  # extreme aspect ratios too
    photo = Image.open(PHOTO).resize(size) if draw(st.booleans()) else Image.linear_gradient("L").resize(size)
    orientation = draw(st.none() | st.integers(1, 8) | st.integers(0, 65535)) if fmt in TAGGED else None
    icc = draw(st.sampled_from([None, "srgb", "apple", "adobe", "broken"])) if fmt in TAGGED else None
    data = encode(in_mode(photo.convert("RGB"), mode), fmt, orientation, profiles().get(icc))
    return data[: draw(st.integers(1, len(data)))] if draw(st.integers(0, 9)) == 0 else data  # truncated


def assert_outcome(row: dict) -> None:
    """Kept, or dropped with a catalogued reason."""
    assert row["status"] == OK and row["reason"] is None or row["reason"] in CATALOGUE, row


def filtered(pipe: Pipeline, data: bytes) -> dict:
    image_id = hashlib.sha256(data).hexdigest()
    pipe.run.write_bytes(f"raw/x/{image_id}", data)
    rows = pa.Table.from_pylist([{"identity": "x", "image_id": image_id, "status": OK, "raw_path": f"raw/x/{image_id}"}],
                                schema=extend(NAMES, PROVENANCE))
    (row,) = pipe.filter.process(rows).to_pylist()
    assert_outcome(row)
    return row


def verified(row: dict) -> dict:
    """The filter's row as verify would pass it on: its largest face the target, else one made up mid-image."""
    width, height = row["width"] or 1, row["height"] or 1
    centre = [width / 2 - 8, height / 2 - 8, width / 2 + 8, height / 2 + 8]
    faces = row["faces"] or [{"box": centre, "landmarks": centre * 2 + centre[:2]}]
    return {**row, "width": width, "height": height, "faces": faces, "target_face": 0}


def crop_outcome(pipe: Pipeline, row: dict) -> dict:
    out = {**row, **pipe.crop.process_row(row)}
    assert_outcome(out)
    return out


def decoded_crops(pipe: Pipeline, crops: list[bytes]) -> None:
    """Segment's and caption's crop loading: an RGB array, or the drop of an unreadable crop."""
    table = pa.table({"crop_image": pa.array(crops, pa.binary())})
    for stage in (pipe.segment, pipe.caption):
        for item in stage.prepare(table):
            pixels = item.pixels() if isinstance(item, CheckedCrop | CaptionCrop) else item  # what travels
            if isinstance(pixels, np.ndarray):
                assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
            else:
                assert_outcome(item)


def thumbnails(pipe: Pipeline, row: dict, crop: bytes) -> None:
    box = row["faces"][0]["box"]
    raw = pipe.thumbs.raw(row, box)
    assert raw is not None or row["reason"] not in DECODED  # what the filter decoded, the report shows
    pipe.thumbs.face(row["image_id"], row["raw_path"], box)
    pipe.thumbs.crop({**row, "crop_image": crop, "crop_faces": [{"box": box}], "crop_size": 64, "mask": None})


def referenced(crop: bytes) -> None:
    """Generate's reference loading: an RGB image, or a user error naming the photo."""
    reference = Reference("x", "0" * 64, None, crop, np.ones(4, np.float32), 1.0)
    try:
        assert reference.image().mode == "RGB"
    except UserError as error:
        assert "0" * 64 in str(error)


def exported(row: dict) -> None:
    shard_row = {**dict.fromkeys(export_rows.COPIED), **row}
    record = export_rows.metadata(shard_row)
    assert record["bbox"] == row["crop_faces"][row["target_face"]]["box"]
    assert export_rows.image_ext(shard_row) == "jpg"
    assert np.load(io.BytesIO(export_rows.npy(export_rows.embedding(shard_row)))).dtype == np.float32


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=any_image())
def test_any_image_ends_as_a_row_or_goes_through(pipeline: Pipeline, data: bytes) -> None:
    row = verified(filtered(pipeline, data))
    if row["reason"] in DECODED:  # the pixels agree with the header's size
        assert decode_upright(data, PILLOW_MAX_PIXELS).size == (row["width"], row["height"])
    for item in pipeline.safety.prepare(pa.Table.from_pylist([row])):
        if isinstance(item, dict):
            assert_outcome(item)
        else:
            assert item.face.ndim == 3 and item.face.dtype == np.uint8
    cropped = crop_outcome(pipeline, row)
    crops = [data, cropped["crop_image"]] if cropped["status"] == OK else [data]
    decoded_crops(pipeline, crops)
    thumbnails(pipeline, row, crops[-1])
    for crop in crops:
        referenced(crop)
    if cropped["status"] == OK and row["status"] == OK:  # a real face: export reads its embedding
        exported(cropped)


@pytest.mark.slow
def test_an_unreadable_crop_is_dropped_beside_masked_ones(pipeline: Pipeline) -> None:
    """Segment drops a crop that does not decode and masks the rest of its batch, in order."""
    cropped = crop_outcome(pipeline, verified(filtered(pipeline, PHOTO.read_bytes())))
    broken = {**cropped, "crop_image": cropped["crop_image"][:200]}
    pipeline.segment.setup()
    rows = pipeline.segment.process(pa.Table.from_pylist([broken, cropped, broken])).to_pylist()
    assert [row["reason"] == "crop_unreadable" for row in rows] == [True, False, True]
    assert rows[1]["mask_source"].startswith("modnet") and rows[1]["mask"]


def face_photo_in(mode: str, fmt: str, **options: object) -> bytes:
    return encode(in_mode(Image.open(PHOTO), mode), fmt, **options)


def test_photos_in_every_mode_keep_their_face(pipeline: Pipeline) -> None:
    """The same portrait in each mode and with an out-of-range orientation is detected, not just survived."""
    photos = [face_photo_in("L", "JPEG"), face_photo_in("CMYK", "JPEG"), face_photo_in("P", "PNG"),
              face_photo_in("I;16", "PNG"), face_photo_in("RGB", "JPEG", orientation=128),
              face_photo_in("RGB", "PNG", icc=profile_of(APPLE))]
    rows = [filtered(pipeline, data) for data in photos]
    assert [(row["status"], row["width"], row["height"]) for row in rows] == [(OK, 1600, 1065)] * len(photos)
    assert [row["icc_profile"] for row in rows] == [None] * 5 + [APPLE_NAME]


def write_odd_photos(folder: Path, faces: dict, identity: str, impostor: str) -> None:
    """`odd-*` files in `folder`: the largest of `identity`'s labelled photos in odd modes, with EXIF
    orientation 128 and with Apple's wide-gamut profile, and `impostor`'s photo in greys (verify drops
    it, so the report draws a box on a grey photo)."""
    photo = Image.open(max((faces["images"] / name for name in faces["identities"][identity]),
                           key=lambda path: min(Image.open(path).size)))
    odd = {
        "grey.jpg": encode(in_mode(photo, "L"), "JPEG"),
        "cmyk.jpg": encode(in_mode(photo, "CMYK"), "JPEG"),
        "palette.png": encode(in_mode(photo, "P"), "PNG"),
        "sixteen-bit.png": encode(in_mode(photo, "I;16"), "PNG"),
        "orientation-128.jpg": encode(photo, "JPEG", orientation=128),
        "apple-display.png": encode(photo, "PNG", icc=profile_of(APPLE)),
        "grey-impostor.jpg": encode(in_mode(Image.open(faces["images"] / impostor), "L"), "JPEG"),
    }
    for name, data in odd.items():
        (folder / f"odd-{name}").write_bytes(data)
