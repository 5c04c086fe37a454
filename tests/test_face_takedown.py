"""Face takedowns (`remove --face`): matching a requester's face among stored faces, the bystander blur,
and the whole command on a copy of the session's shared run, with the real SFace model and the labelled
photos. In the shared run, Angelina Jolie's folder holds couple.jpg, where she is the target and Brad
Pitt (no identity of the run) stands beside her; Brad Pitt asks with a face cut from another photo
of him (selfie-many-people.jpg), Angelina Jolie with a re-encoded, shrunk copy of one of her photos."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core import faceprints
from pipeline.core.config import load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.optout import OptOutList
from pipeline.core.rundir import RunDir
from pipeline.core.schema import CAPTION, CROP, FACE, MASK
from pipeline.dataset.blur import blur_image, blur_table, clear_mask
from pipeline.dataset.face_match import FaceMatches, match_cut, match_table
from pipeline.dataset.face_optout import face_refusals
from pipeline.dataset.shards import write_shard
from pipeline.engine.registry import STAGES
from pipeline.remove_face import _removal
from pipeline.report.state import load_state
from stages.faces import open_backend
from stages.face_photos import embed_photos
from tests.conftest import FACES, run_cli

CONFIG = load_config(resolve_profile("cpu"))
LEFT, RIGHT = "img29.jpg", "img38.jpg"  # matt_damon, george_clooney


@pytest.fixture(scope="module")
def backend():
    return open_backend(CONFIG)


def side_by_side(tmp_path: Path, left: str, right: str) -> Path:
    """A group photo: two labelled people's photos pasted side by side at one height."""
    images = [Image.open(FACES / "images" / name).convert("RGB") for name in (left, right)]
    height = min(image.height for image in images)
    images = [image.resize((round(image.width * height / image.height), height)) for image in images]
    group = Image.new("RGB", (sum(image.width for image in images), height))
    group.paste(images[0], (0, 0))
    group.paste(images[1], (images[0].width, 0))
    path = tmp_path / f"group-{left}-{right}"
    group.save(path, "JPEG", quality=90)
    return path


def stored_row(backend, photo: Path, identity: str, target_left: bool) -> dict:
    """The row filter and verify would store for the photo: its faces, and the target verify picks."""
    image = np.asarray(Image.open(photo).convert("RGB"))
    faces = backend.analyze([image])[0]
    assert len(faces) == 2  # both people detectable
    order = sorted(range(2), key=lambda i: faces[i].box[0])
    records = [{"box": list(map(float, face.box)), "embedding": face.embedding.tolist()} for face in faces]
    return {"identity": identity, "image_id": photo.name, "faces": records,
            "target_face": order[0] if target_left else order[1], "left": order[0], "right": order[1]}


def test_a_face_is_found_as_target_or_bystander_in_group_photos(backend, tmp_path: Path) -> None:
    group = side_by_side(tmp_path, LEFT, RIGHT)
    row = stored_row(backend, group, "george_clooney", target_left=False)
    table = pa.Table.from_pylist([{k: row[k] for k in ("identity", "image_id", "faces", "target_face")}])
    cut = match_cut(CONFIG)
    matt, george, scarlett = (embed_photos(backend, CONFIG, [FACES / "images" / name])
                              for name in ("img30.jpg", "img40.jpg", "img47.jpg"))  # photos not in the group
    as_bystander = match_table(table, matt, cut)
    assert as_bystander.targets == set() and as_bystander.bystanders == {("george_clooney", group.name): {row["left"]}}
    assert match_table(table, george, cut).targets == {("george_clooney", group.name)}
    nobody = match_table(table, scarlett, cut)
    assert not nobody.targets and not nobody.bystanders and nobody.best < cut
    without_verify = table.drop_columns(["target_face"])  # a row verify dropped: its largest face is its subject
    largest = max(range(2), key=lambda i: np.prod(np.subtract(row["faces"][i]["box"][2:], row["faces"][i]["box"][:2])))
    found = match_table(without_verify, george if largest == row["right"] else matt, cut)
    assert found.targets == {("george_clooney", group.name)}


def test_the_bystander_rule_blurs_or_drops() -> None:
    found = FaceMatches({("a", "1" * 64)}, {("b", "2" * 64): {0, 2}})
    blurred = _removal("h", found, "blur", None, "tester")
    assert blurred.rows == (f"a/{'1' * 64}",) and blurred.blurred == (f"b/{'2' * 64}/0", f"b/{'2' * 64}/2")
    dropped = _removal("h", found, "drop", None, "tester")
    assert dropped.rows == (f"a/{'1' * 64}", f"b/{'2' * 64}") and dropped.blurred == ()


def test_the_blur_changes_the_face_region_only_and_clears_it_from_the_mask() -> None:
    image = Image.open(FACES / "images" / "img1.jpg").convert("RGB").resize((512, 512))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    box = [100.0, 120.0, 220.0, 260.0]
    after = np.asarray(Image.open(io.BytesIO(blur_image(buffer.getvalue(), "PNG", [box]))), dtype=np.int16)
    before = np.asarray(image, dtype=np.int16)
    changed = np.abs(after - before).sum(axis=2) > 0
    assert changed[140:240, 110:210].mean() > 0.9  # the face
    assert not changed[:80].any() and not changed[:, 300:].any()  # beyond the widened box: untouched
    assert np.abs(after[120:260, 100:220] - before[120:260, 100:220]).mean() > 8  # detail gone, not a tint
    mask = Image.new("1", (512, 512), 1)
    out = io.BytesIO()
    mask.save(out, "PNG")
    cleared = np.asarray(Image.open(io.BytesIO(clear_mask(out.getvalue(), [box]))))
    assert not cleared[120:260, 100:220].any() and cleared[:80].all() and cleared[300:].all()


SHARD_SCHEMA_PARTS = [  # the columns a blur reads and rewrites, as the shards type them
    pa.field("identity", pa.string()), pa.field("image_id", pa.string()), pa.field("faces", pa.list_(FACE)),
    pa.field("identities", pa.list_(pa.string())), pa.field("num_identities", pa.int32()),
    *(CROP.field(name) for name in ("crop_image", "crop_format", "crop_faces")),
    *(MASK.field(name) for name in ("mask", "person_masks")), CAPTION.field("caption_people"),
]


def test_a_blurred_bystander_is_no_longer_named_anywhere_in_the_row() -> None:
    """A requester who is an identity of the run, beside someone else's target: their label goes with their face."""
    crop, mask = io.BytesIO(), io.BytesIO()
    Image.open(FACES / "images" / "couple.jpg").convert("RGB").resize((256, 256)).save(crop, "JPEG")
    Image.new("1", (256, 256), 1).save(mask, "PNG")
    faces = [{"box": [10.0, 10.0, 60.0, 60.0], "identity": "jolie", "identity_score": 0.9},
             {"box": [150.0, 20.0, 200.0, 70.0], "identity": "pitt", "identity_score": 0.8}]
    row = {"identity": "jolie", "image_id": "a" * 64, "crop_image": crop.getvalue(), "crop_format": "JPEG",
           "crop_faces": [{"box": face["box"]} for face in faces], "mask": mask.getvalue(), "faces": faces,
           "identities": ["jolie", "pitt"], "num_identities": 2,
           "person_masks": [{"identity": "jolie", "mask": b"j"}, {"identity": "pitt", "mask": b"p"}],
           "caption_people": [{"identity": "jolie", "face": 0}, {"identity": "pitt", "face": 1}]}
    schema = pa.schema([*SHARD_SCHEMA_PARTS, CROP.field("blurred_faces")])
    out, changed = blur_table(pa.Table.from_pylist([row], schema=schema), {("jolie", "a" * 64): {1}})
    (after,) = out.to_pylist()
    assert changed == 1 and after["blurred_faces"] == [1] and after["crop_image"] != row["crop_image"]
    assert [face["identity"] for face in after["faces"]] == ["jolie", None] and after["faces"][1]["identity_score"] is None
    assert (after["identities"], after["num_identities"]) == (["jolie"], 1)
    assert [entry["identity"] for entry in after["person_masks"]] == ["jolie"]
    assert [entry["face"] for entry in after["caption_people"]] == [0]
    assert "pitt" not in json.dumps({key: value for key, value in after.items() if isinstance(value, (str, list, int))},
                                    default=str)


def test_the_ledger_keeps_a_salted_hash_the_embedding_only_in_its_file(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    vectors = np.eye(2, 128, dtype=np.float32)
    first = faceprints.salted_hashes(run, vectors)
    assert first == faceprints.salted_hashes(run, vectors) and first[0] != first[1]
    other = RunDir(str(tmp_path / "other"))
    assert faceprints.salted_hashes(other, vectors) != first  # another run's salt: not comparable across runs
    rel = faceprints.save(run, "r1", vectors)
    assert rel == "governance/faceprints/r1.npy" and np.array_equal(faceprints.load_all(run), vectors)


# -- end to end, on a copy of the shared run ----------------------------------------------------------------
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_rows(out: Path) -> dict[tuple[str, str], dict]:
    rows = {}
    for path in sorted((out / "shards").glob("train-*.parquet")):
        columns = ["identity", "image_id", "crop_image", "mask", "blurred_faces"]
        for row in pq.read_table(path, columns=columns).to_pylist():
            rows[(row["identity"], row["image_id"])] = row
    return rows


def remove_face(out: Path, photo: Path) -> dict:
    result = run_cli("remove", "--out", str(out), "--face", str(photo), "--reason", "subject request")
    assert result.returncode == 0, result.stderr
    receipt = next(line for line in result.stdout.splitlines() if line.startswith("receipt for the requester: "))
    return json.loads(Path(receipt.split(": ", 1)[1]).read_text())


@pytest.mark.slow
def test_a_face_takedown_removes_the_target_blurs_the_bystander_and_nothing_else(shared_run, tmp_path: Path) -> None:
    out = shared_run.copy(tmp_path / "run")
    before, shards_before = shard_rows(out), {p.name: p.read_bytes() for p in (out / "shards").glob("train-*")}
    couple = sha(FACES / "images" / "couple.jpg")
    assert ("angelina_jolie", couple) in before

    brad = tmp_path / "brad.jpg"  # Brad Pitt's face, cut from another photo of him
    Image.open(FACES / "images" / "selfie-many-people.jpg").crop((300, 40, 540, 360)).save(brad, quality=90)
    receipt = remove_face(out, brad)
    assert (receipt["taken_down"], receipt["blurred"]) == ([], [couple])
    after = shard_rows(out)
    assert after.keys() == before.keys()  # nothing removed
    changed = {key for key in before if after[key]["crop_image"] != before[key]["crop_image"]}
    assert changed == {("angelina_jolie", couple)} and after[("angelina_jolie", couple)]["blurred_faces"] == [0]
    assert after[("angelina_jolie", couple)]["mask"] != before[("angelina_jolie", couple)]["mask"]
    rewritten = {name for name, data in shards_before.items() if (out / "shards" / name).read_bytes() != data}
    assert len(rewritten) == 1  # only the shard holding the couple photo
    crops = pq.read_table(out / "stages" / "crop" / "part-angelina_jolie.parquet",
                          columns=["image_id", "blurred_faces"])
    assert {r["image_id"]: r["blurred_faces"] for r in crops.to_pylist()}[couple] == [0]  # the stage parts too
    entry = json.loads(next((out / "governance" / "removals").glob("*.json")).read_text())
    assert entry["kind"] == "face" and len(entry["value"]) == 64  # a salted hash, never the embedding
    assert len(list((out / "governance" / "faceprints").glob("*.npy"))) == 1

    angelina = tmp_path / "angelina.jpg"  # a re-encoded, shrunk copy of one of her photos
    image = Image.open(FACES / "images" / "img1.jpg")
    image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(angelina, quality=60)
    receipt = remove_face(out, angelina)
    hers = {image_id for identity, image_id in before if identity == "angelina_jolie"}
    assert set(receipt["taken_down"]) == hers and receipt["blurred"] == []
    assert "angelina_jolie" not in json.dumps(receipt)  # the receipt names nobody
    final = shard_rows(out)
    assert final.keys() == {key for key in before if key[0] != "angelina_jolie"}
    assert all(final[key]["crop_image"] == before[key]["crop_image"] for key in final)  # nothing else touched
    crawl = pq.read_table(out / "stages" / "crawl" / "part-angelina_jolie.parquet").to_pylist()
    assert {row["image_id"] for row in crawl if row["reason"] == "taken_down"} >= hers
    assert not any((out / row["raw_path"]).exists() for row in crawl if row["image_id"] in hers and row["raw_path"])
    assert len(list((out / "governance" / "removals").glob("*.json"))) == 2


def test_a_face_optout_entry_names_an_existing_file(tmp_path: Path) -> None:
    listing = tmp_path / "optout.txt"
    listing.write_text("face:missing.jpg\n")
    with pytest.raises(UserError, match="missing.jpg does not exist"):
        OptOutList.read([listing], 8)
    (tmp_path / "jane.jpg").write_bytes((FACES / "images" / "img1.jpg").read_bytes())
    listing.write_text("face:jane.jpg\n")
    first = OptOutList.read([listing], 8)
    assert first.faces == (tmp_path / "jane.jpg",) and first
    (tmp_path / "jane.jpg").write_bytes((FACES / "images" / "img2.jpg").read_bytes())
    assert OptOutList.read([listing], 8).digest != first.digest  # a replaced photo reshards


@pytest.mark.slow
def test_face_optout_entries_keep_a_face_out_of_the_shards(shared_run, backend, tmp_path: Path) -> None:
    """The shard step's own per-shard function, on a copy of the shared run: a photo entry (Brad Pitt, beside
    Angelina Jolie in couple.jpg) and a stored-embedding entry (Matt Damon, from a photo the run lacks)."""
    out = shared_run.copy(tmp_path / "run")
    run = RunDir(str(out))
    before = shard_rows(out)
    Image.open(FACES / "images" / "selfie-many-people.jpg").crop((300, 40, 540, 360)).save(tmp_path / "brad.jpg")
    np.save(tmp_path / "matt.npy", embed_photos(backend, CONFIG, [FACES / "images" / "img30.jpg"]))
    listing = tmp_path / "optout.txt"
    listing.write_text("face:brad.jpg\nface:matt.npy\n")
    optout = OptOutList.read([listing], 8)
    refusals = face_refusals(run, load_state(run).config, optout)
    index = pq.read_table(out / "shards" / "_index.parquet").to_pylist()
    left_out: Counter[str] = Counter()
    for name in sorted({row["shard"] for row in index}):
        identities = [row["identity"] for row in index if row["shard"] == name]
        result = write_shard(run, STAGES[-1].name, f"shards/{name}", identities, 3, optout, refusals)
        left_out.update(result["opted_out"])
    after = shard_rows(out)
    damon = {key for key in before if key[0] == "matt_damon"}
    assert damon and left_out == {"opted_out_face": len(damon)} and after.keys() == before.keys() - damon
    couple = ("angelina_jolie", sha(FACES / "images" / "couple.jpg"))
    assert after[couple]["blurred_faces"] == [0] and after[couple]["crop_image"] != before[couple]["crop_image"]
    assert all(after[key]["crop_image"] == before[key]["crop_image"] for key in after if key != couple)


def test_stored_embeddings_of_another_backend_are_one_error(tmp_path: Path) -> None:
    np.save(tmp_path / "arcface.npy", np.eye(1, 512, dtype=np.float32))  # 512-d: not SFace's 128
    (tmp_path / "optout.txt").write_text("face:arcface.npy\n")
    optout = OptOutList.read([tmp_path / "optout.txt"], 8)
    with pytest.raises(UserError, match="512-d embeddings; the run's face backend .sface. stores 128-d"):
        face_refusals(RunDir(str(tmp_path / "run")), CONFIG, optout)
