"""A release is safe to publish: no name (unless --keep-names), no embedding (unless --with-embeddings), no local
path, no image metadata but the ICC profile, the ledger applied; tools read it (mlcroissant, datasets), and a
second release of the run agrees with the first and lists what its holders must delete.

The images' metadata is read back with Pillow (getexif, info, IptcImagePlugin). The end-to-end test releases a
copy of the shared run (tests/shared_run.py) whose first shard holds a crop with GPS EXIF, XMP and IPTC.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

import datasets
import mlcroissant
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import ExifTags, Image, ImageCms, IptcImagePlugin, PngImagePlugin

from pipeline.core.removals import new_removal, record
from pipeline.core.rundir import RunDir
from pipeline.dataset.release_images import strip_metadata
from pipeline.dataset.release_keys import IdentityKeys, release_secret, secret_id
from pipeline.dataset.release_rows import ReleaseOptions
from pipeline.dataset.release_write import write_release_shard
from tests.conftest import run_cli
from tests.shared_run import HOSTILE_NAME, NAMES, SLUGS, SharedRun

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description photoshop:City="Secret Place"/>'
       b"</rdf:RDF></x:xmpmeta>")
IPTC_TEXT = b"Secret Place IPTC"
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def tagged_exif() -> Image.Exif:
    """EXIF with a GPS position, a camera and a maker note."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SecretCam"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.MakerNote] = b"SecretMakerNote"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef], gps[ExifTags.GPS.GPSLatitude] = "N", (48.0, 51.0, 24.0)
    return exif


def with_iptc(jpeg: bytes) -> bytes:
    """An APP13 Photoshop segment holding an IPTC object name, right after the JPEG's start marker."""
    dataset = b"\x1c\x02\x05" + struct.pack(">H", len(IPTC_TEXT)) + IPTC_TEXT
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(dataset)) + dataset
    body = b"Photoshop 3.0\x00" + resource
    return jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def tagged_photo(fmt: str, face: Path) -> bytes:
    image = Image.open(face).convert("RGB").resize((160, 120))
    buffer = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        info.add_text("Comment", "Secret Place")
        image.save(buffer, "PNG", pnginfo=info, exif=tagged_exif(), icc_profile=SRGB)
    else:
        image.save(buffer, fmt, exif=tagged_exif(), xmp=XMP, icc_profile=SRGB)
    data = buffer.getvalue()
    return with_iptc(data) if fmt == "JPEG" else data


def assert_clean(data: bytes) -> None:
    """No EXIF (so no GPS, no maker note), no XMP, no IPTC, no text chunk (an ICC profile may stay)."""
    with Image.open(io.BytesIO(data)) as image:
        assert len(image.getexif()) == 0
        assert IptcImagePlugin.getiptcinfo(image) is None
        assert not {"xmp", "XML:com.adobe.xmp", "exif", "Comment"} & set(image.info)
    assert b"Secret" not in data


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_metadata_is_stripped_the_icc_profile_and_the_pixels_kept(faces: dict, fmt: str) -> None:
    photo = tagged_photo(fmt, faces["images"] / faces["identities"]["angelina_jolie"][0])
    with Image.open(io.BytesIO(photo)) as image:  # the photo really carries what the release must strip
        assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo) and b"Secret Place" in photo
        pixels = np.asarray(image.convert("RGB"))
    stripped = strip_metadata(photo)
    assert_clean(stripped)
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.info["icc_profile"] == SRGB
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)  # segments dropped, nothing encoded again


def test_a_malformed_container_is_encoded_again_without_metadata(faces: dict) -> None:
    photo = tagged_photo("JPEG", faces["images"] / faces["identities"]["angelina_jolie"][0])
    app0_end = 4 + struct.unpack(">H", photo[4:6])[0]
    broken = photo[:app0_end] + b"\x00\x00" + photo[app0_end:]  # stray bytes between segments: decoders skip them
    stripped = strip_metadata(broken)
    assert stripped != broken
    assert_clean(stripped)


def test_keys_are_keyed_hashes_that_one_run_repeats(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path / "run"))
    secret = release_secret(run)
    assert release_secret(run) == secret and len(secret) == 32
    keys, other = IdentityKeys(secret), IdentityKeys(release_secret(RunDir(str(tmp_path / "other"))))
    assert keys("angelina_jolie") == IdentityKeys(secret)("angelina_jolie") != other("angelina_jolie")
    assert keys("angelina_jolie") != keys("matt_damon") and len(keys("matt_damon")) == 64
    assert secret_id(secret) != secret_id(release_secret(RunDir(str(tmp_path / "other"))))


def every_file(root: Path) -> dict[Path, bytes]:
    """Each file of a release as bytes, a Parquet file's decoded values appended (its pages are compressed)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            binaries = [v for c in table.columns if pa.types.is_binary(c.type) for v in c.to_pylist() if v]
            data += repr(table.to_pylist()).encode() + b"".join(binaries)
        elif path.suffix == ".tar":
            with tarfile.open(path) as tar:
                data += b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
        found[path] = data
    return found


def embeddings(run: Path) -> list[bytes]:
    table = pq.read_table(sorted(str(p) for p in (run / "shards").glob("train-*.parquet")), columns=["faces"])
    return [np.asarray(face["embedding"], np.float32).tobytes() for row in table["faces"].to_pylist() for face in row]


def plant_tagged_crop(run: Path, faces: dict) -> str:
    """The first shard's first crop replaced by one with GPS EXIF, XMP and IPTC; its image_id."""
    shard = sorted((run / "shards").glob("train-*.parquet"))[0]
    table = pq.read_table(shard)
    crops = table["crop_image"].to_pylist()
    crops[0] = tagged_photo("JPEG", faces["images"] / faces["identities"]["angelina_jolie"][0])
    table = table.set_column(table.column_names.index("crop_image"), "crop_image", pa.array(crops, pa.binary()))
    pq.write_table(table, shard, compression="zstd", row_group_size=3)
    return table["image_id"][0].as_py()


def release(run: Path, dest: Path, *extra: str) -> str:
    result = run_cli("release", "--config", "cpu", "--out", str(run), "--dest", str(dest), "--quiet", *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def released(shared_run: SharedRun, faces: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the shared run with a tagged crop and one photo taken down; its release; the same release after
    a second photo is taken down and a bystander in a group photo is to be blurred (--since the first)."""
    root = tmp_path_factory.mktemp("release")
    run = shared_run.copy(root / "run")
    tagged = plant_tagged_crop(run, faces)
    shard_rows = pq.read_table(sorted(str(p) for p in (run / "shards").glob("train-*.parquet")),
                               columns=["identity", "image_id", "target_face", "crop_faces"]).to_pylist()
    first_gone, second_gone = shard_rows[-1], shard_rows[-2]
    group = next(row for row in shard_rows[1:-2] if len(row["crop_faces"]) > 1)
    bystander = next(face for face in range(len(group["crop_faces"])) if face != group["target_face"])
    record(RunDir(str(run)), new_removal("image", first_gone["image_id"], "test", "tests",
                                         image_ids=(first_gone["image_id"],)))
    first = release(run, root / "first")
    shutil.copytree(root / "first", root / "first_kept")  # as a downstream holder has it
    record(RunDir(str(run)), new_removal("image", second_gone["image_id"], "test", "tests",
                                         image_ids=(second_gone["image_id"],)))
    blurred = f"{group['identity']}/{group['image_id']}/{bystander}"  # as a face takedown records it
    record(RunDir(str(run)), new_removal("face", "salted-hash", "test", "tests", blurred=(blurred,)))
    second = release(run, root / "first", "--since", str(root / "first_kept"))
    return {"run": run, "dest": root / "first", "previous": root / "first_kept", "tagged": tagged,
            "rows": shard_rows, "gone": [first_gone, second_gone], "stdout": [first, second],
            "group": group, "bystander": bystander}


@pytest.mark.slow
def test_a_release_holds_no_name_path_raw_folder_embedding_or_metadata(released: dict) -> None:
    run, dest = released["run"], released["dest"]
    files = every_file(dest)
    assert {path.name for path in files} >= {"README.md", "croissant.json", "deletions.txt", "_index.parquet"}
    needles = {str(run).encode(), str(run / "raw").encode(), b"file://", *(n.encode() for n in [*NAMES, *SLUGS]),
               HOSTILE_NAME.split()[0].encode()}
    vectors = embeddings(run)
    for path, data in files.items():
        found = [needle for needle in needles if needle.lower() in data.lower()]
        assert not found, f"{path.relative_to(dest)} holds {found}"
        assert not any(vector in data for vector in vectors), f"{path.relative_to(dest)} holds an embedding"
    table = pq.read_table(sorted(str(p) for p in (dest / "shards").glob("train-*.parquet")))
    assert "name" not in table.column_names and "embedding" not in str(table.schema)
    crops = dict(zip(table["image_id"].to_pylist(), table["crop_image"].to_pylist()))
    assert released["tagged"] in crops
    for data in [*crops.values(), *table["mask"].to_pylist()]:
        assert_clean(data)


@pytest.mark.slow
def test_the_ledger_is_applied_and_keys_agree_across_releases(released: dict) -> None:
    dest, previous = released["dest"], released["previous"]

    def keys(release: Path) -> list[str]:
        table = pq.read_table(sorted(str(p) for p in (release / "shards").glob("train-*.parquet")))
        return [f"{i}/{m}" for i, m in zip(table["identity"].to_pylist(), table["image_id"].to_pylist())]

    before, after = keys(previous), keys(dest)
    assert len(before) == len(released["rows"]) - 1 and len(after) == len(before) - 1
    assert set(after) < set(before)  # the same run's two releases give every kept row the same key
    gone = [key for key in before if key not in after]
    assert (dest / "deletions.txt").read_text().splitlines() == gone
    assert gone[0].endswith(released["gone"][1]["image_id"])
    assert not any(key.endswith(released["gone"][0]["image_id"]) for key in before)
    assert "1 withheld" in released["stdout"][0] and "2 withheld" in released["stdout"][1]
    assert "1 keys to delete" in released["stdout"][1]
    index = pq.read_table(dest / "shards" / "_index.parquet").to_pylist()
    assert sum(entry["num_rows"] for entry in index) == len(after)


@pytest.mark.slow
def test_croissant_validates_and_datasets_loads_the_release(released: dict) -> None:
    dest = released["dest"]
    metadata = json.loads((dest / "croissant.json").read_text())
    assert {"rai:dataCollection", "rai:personalSensitiveInformation", "rai:dataUseCases",
            "rai:dataReleaseMaintenancePlan"} <= set(metadata)
    dataset = mlcroissant.Dataset(jsonld=str(dest / "croissant.json"))  # raises on a validation error
    records = list(dataset.records("images"))
    loaded = datasets.load_dataset(str(dest), split="train")
    assert len(records) == loaded.num_rows == len(released["rows"]) - 2
    card = (dest / "README.md").read_text()
    assert "## Release" in card and "## Datasheet" in card and "**not kept**" in card


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_names_and_embeddings_only_when_asked(released: dict, tmp_path: Path, fmt: str) -> None:
    run, dest = RunDir(str(released["run"])), RunDir(str(tmp_path))
    shard = sorted(p.name for p in (released["run"] / "shards").glob("train-*.parquet"))[0]
    options = ReleaseOptions(keep_names=True, with_embeddings=True)
    counts = write_release_shard(run, dest, shard, fmt, options)
    assert sum(entry["num_rows"] for entry in counts) > 0
    if fmt == "parquet":
        rows = pq.read_table(tmp_path / "shards" / shard).to_pylist()
    else:
        with tarfile.open(next(tmp_path.rglob("*.tar"))) as tar:
            rows = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    assert {row["name"] for row in rows} <= set(NAMES) and all(len(row["identity"]) == 64 for row in rows)
    assert all(len(face["embedding"]) > 0 for row in rows for face in row["faces"])


@pytest.mark.slow
def test_the_report_says_what_the_last_release_holds(released: dict, tmp_path: Path) -> None:
    from pipeline.report import release as report_release

    html, numbers = report_release.build(RunDir(str(released["run"])))
    assert str(released["dest"]) in html and "Names: <b>not kept</b>" in html
    assert "Face embeddings: <b>not kept</b>" in html
    assert numbers["withheld"] == 2 and numbers["deletions"] == 1 and numbers["keep_names"] is False
    assert "Bystanders blurred" in html and "face takedowns" in html
    assert report_release.build(RunDir(str(tmp_path))) == (report_release.NO_RELEASE, {})


@pytest.mark.slow
def test_a_bystander_a_face_takedown_blurs_is_blurred_in_the_release(released: dict) -> None:
    """The shards were not rewritten by a takedown here: the release blurs the face itself."""
    image_id = released["group"]["image_id"]

    def row(folder: Path) -> dict:
        table = pq.read_table(sorted(str(p) for p in (folder / "shards").glob("train-*.parquet")))
        return next(r for r in table.to_pylist() if r["image_id"] == image_id)

    before, after, shard = row(released["previous"]), row(released["dest"]), row(released["run"])
    assert not before["blurred_faces"] and after["blurred_faces"] == [released["bystander"]]
    assert before["crop_image"] == shard["crop_image"] != after["crop_image"]
    assert_clean(after["crop_image"])
    assert "Bystanders blurred: 1 faces" in (released["dest"] / "README.md").read_text()
